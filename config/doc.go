// Package config is the first stage of the nodemesh pipeline:
//
//	sources (YAML files, Kubernetes) -> config -> translate -> xds -> nodeagent
//
// It knows the kinds nodemesh reads (Kubernetes core objects, Istio networking
// and security resources), decodes them strictly (an unknown field is an error
// that names the file, document, object and field), and keeps them in a
// go-memdb store whose read transactions are immutable snapshots for the
// translator. It does not log and does not touch the network.
package config
