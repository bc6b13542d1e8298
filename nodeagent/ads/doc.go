// Package ads is the node agent's xDS client, the first step inside the node
// agent in the nodemesh pipeline:
//
//	sources -> config -> translate -> xds -> nodeagent/ads -> nodeagent (bpf maps)
//	                                              \-> nodeagent/envoy (shared Envoy)
//
// A Client holds ONE Delta ADS stream (DeltaAggregatedResources) per node to
// the control plane and subscribes, as a wildcard, to the four dataplane
// resource types of api/dataplane/v1 (NamespaceListener, Workload, Service,
// Policy). It keeps the full resource set per type from the deltas it
// receives and hands the whole desired set to an Applier after each
// response. It ACKs a response only once Apply returned nil; on an error it
// sends a NACK carrying the error message and keeps the previous applied
// set, which the kernel keeps forwarding with.
//
// Semantics, chosen to match Envoy's delta subscriptions:
//
//   - The first Apply of a Client waits until every type has had its first
//     response, so a restarting agent never programs a partial set over the
//     pinned maps of its previous run (services without their workloads, or
//     nothing at all while the rest is still in flight).
//   - After that, a rejected response is dropped: the held set stays at the
//     last applied one, and the next response is applied on top of it. The
//     control plane resends the rejected resource when it changes, or on
//     reconnect (the client announces the versions it applied). Unless
//     Config.NoRetry, the client re-subscribes after a growing backoff
//     while a rejection is unhealed, so a transient failure (a map write)
//     heals without a new change, and a bad resource keeps being NACKed.
//     When responses folded into one Apply fail together, they are applied
//     one at a time, so a bad one does not hold the others back.
//   - A response that changes nothing (same versions, no removals) is ACKed
//     without calling Apply. Responses that arrived together (different
//     types) are folded into one Apply and ACKed (or NACKed) each.
//   - When the stream breaks, the client reconnects with exponential backoff
//     and jitter and re-subscribes with initial_resource_versions of what it
//     applied, so an unchanged control plane sends nothing new. Nothing is
//     torn down while the control plane is away.
//
// ToState (and Converter, its memoizing form) converts the protobuf
// resources into the kernel half's nodeagent.State, with errors that name
// the resource and field; such an error becomes the NACK.
// NewDataplaneApplier joins the two: the Applier mesh-agent gives the
// Client. Dial opens the control plane connection that the Client and the
// Envoy xDS proxy (nodeagent/envoy) share. Client.Status and
// Client.StatusHandler (JSON, and ?ready for a readiness probe) report the
// sync state per type URL.
package ads
