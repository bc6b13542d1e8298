// Package dataplane translates a config snapshot into the dataplane
// resources of one node (api/dataplane/v1): what the node agent programs
// into the kernel. It sits beside translate (which builds the node's Envoy
// resources) in the pipeline:
//
//	config.Snapshot + node -> translate/dataplane -> xds (ADS, SotW and Delta) -> nodeagent/ads -> bpf maps
//
// Like translate it is pure and deterministic (same input, same bytes:
// every output is sorted by ResourceName), never imports gRPC,
// cilium/ebpf, net or os, never reads the clock (deps_test.go), and turns
// problems in user objects into config.Diagnostics while the rest keeps
// working.
//
// # What a node gets (node.go)
//
// NamespaceListeners for the namespaces with pods on the node, on the ports
// of translate.AllocateNamespacePorts (the Envoy listeners' ports); Services
// for every TCP/UDP port with a cluster IP that those namespaces may reach
// (exportTo and Sidecar egress hosts, visibility.go)
// (services.go: backends from EndpointSlices, else from selected ready
// pods, weight 1 each; headless services have no VIP and no resource);
// l7 set by the rules in l7.go; the Policies the kernel enforces for the
// node's identities (policy.go, rules.go); and the Workloads it must
// classify: its own pods and the sources those policies name.
//
// # Numbers (ids.go)
//
// Workload identities (one per namespace/service account) and namespace ids
// are hashed from their names into reserved ranges, with linear probing over
// the sorted set of names: the same on every node, across meshd restarts,
// independent of the order objects arrive in. Only names whose hash
// collided can ever move.
//
// # Policy split (policy.go)
//
// AuthorizationPolicy rules that only use L4 attributes become kernel
// rules; anything else is left to Envoy RBAC in the node proxy and marks the
// selected services l7. All ALLOW policies of an identity are enforced in
// one place, so a decision is never weakened by the split.
//
// Every rule left to the proxy is reported as an Info diagnostic on the
// rule's field whose message contains "enforced by Envoy RBAC in the node
// proxy"; translate/authz's tests check that its split agrees rule by rule.
//
// # Tests
//
// Golden cases in testdata/golden/<case>/input.yaml (on top of bookinfo,
// testdata/bookinfo.yaml and pods.yaml) -> <node>.json; refresh with
// UPDATE_GOLDEN=1 go test ./translate/dataplane/ -run Golden. Behaviour
// tests run the output through the agent's own converter
// (nodeagent/ads.ToState, State.Validate) and evaluate the kernel's policy
// semantics on it.
//
// Prepare(snap, opts) builds the mesh-wide model once; Mesh.Translate(node)
// then costs little per node. Translate(snap, node) does both.
package dataplane
