// Package config is the first stage of the nodemesh pipeline:
//
//	sources (YAML files, Kubernetes) -> config -> translate -> xds -> nodeagent
//
// It knows the kinds nodemesh reads (Kubernetes core objects, Istio networking
// and security resources), decodes them strictly (an unknown field is an error
// that names the file, document, object and field), and keeps them in a
// go-memdb store whose read transactions are immutable snapshots for the
// translator. It does not log and does not touch the network.
//
// Files:
//   - loader.go: Load and Decode; splitting streams into documents.
//   - decode.go, decode_core.go, decode_istio.go: per-kind strict decoding
//     (sigs.k8s.io/json for Kubernetes types, protojson for Istio specs);
//     specwalk.go finds every unknown Istio field and accepts Go durations;
//     fieldline.go and jsonpath.go turn decoder errors into field paths and
//     lines.
//   - store.go, snapshot.go: the go-memdb store (Replace, Apply, Watch) and
//     its snapshots with indexed lookups (pods by node and by selector,
//     EndpointSlices by service); hash.go skips writes of unchanged objects.
//   - smi.go, decode_smi.go: the SMI kinds (TrafficSplit, TrafficTarget,
//     HTTPRouteGroup, TCPRoute, UDPRoute) as small Go structs, decoded
//     strictly and validated.
//   - filesource.go: a directory polled and applied as one source, keeping
//     the last good config when the files have errors.
package config
