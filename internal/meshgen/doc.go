// Package meshgen generates synthetic meshes ([]*config.Object) for the
// translator's and the control plane's benchmarks: services spread over
// namespaces, pods spread over nodes, EndpointSlices, and a fraction of
// services with an 80/20 VirtualService over two DestinationRule subsets,
// the shape of the istiod comparison in DESIGN.md. It sits beside the
// pipeline (it feeds config.Store like a source would) and is pure and
// deterministic: the same Params give the same objects.
package meshgen
