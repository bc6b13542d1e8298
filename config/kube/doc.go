// Package kube is the Kubernetes source of the nodemesh pipeline:
//
//	Kubernetes API (client-go informers) -> kube.Source -> config.Store -> translate -> xds
//
// A Source watches, with client-go shared informers, the objects meshd
// reads: core kinds through typed informers (Namespace, Service,
// EndpointSlice, Pod, ServiceAccount), and the Istio (networking.istio.io,
// security.istio.io) and SMI (split, access and specs.smi-spec.io) custom
// resources through dynamic informers, in the newest version the server
// serves that config can decode. Custom resources are decoded by config's own
// decoder (config.Decode on the object's JSON), exactly as the file source
// decodes YAML, so both sources accept and reject the same things.
//
// Every change is coalesced (Config.Debounce) and the whole set of objects is
// handed to config.Store.Replace under one source name ("k8s"); the store
// skips unchanged objects. Nothing is written to the store before every
// informer has synced, so a starting meshd never serves an empty mesh.
// Informers relist after watch errors and resync on Config.Resync.
//
// An object the decoder rejects is left out (the rest keeps flowing), kept
// in Diagnostics, and reported on the object itself as a Kubernetes Warning
// Event (reason InvalidConfig, message naming the field), where `kubectl
// describe` shows it. Only the leader writes: with Config.LeaderElection set,
// replicas elect one through a coordination.k8s.io Lease; every replica reads
// and serves.
//
// Pods: meshd (the control plane) watches every pod in the cluster, because
// it must know all endpoints and identities. Node agents never do: each one
// receives from meshd over ADS only the slice its node needs, so the API
// server's watch load does not grow with the number of nodes.
//
// Files:
//   - config.go: Config, LeaderElection and their defaults.
//   - source.go: Source, Run, sync and the coalescing rebuild loop.
//   - resources.go: the kinds read and how their versions are discovered.
//   - convert.go: informer objects to config.Object.
//   - events.go: leader election and Event write-back.
package kube
