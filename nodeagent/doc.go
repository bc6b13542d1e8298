// Package nodeagent is the kernel half of the node agent, the last step of
// the nodemesh pipeline:
//
//	translate -> xds -> nodeagent/ads (ADS client) -> nodeagent (this) -> bpf maps and programs
//
// The ADS client (or mesh-agent --state FILE.yaml) turns what the control
// plane sends into a State: services with their backends, workloads with
// identities, L4 policy rules, the node proxy's per-namespace listeners
// (Redirects) and opt-in same-node acceleration. A Dataplane (Open) loads
// the programs of package bpf, adopts or creates the maps pinned under
// Config.PinDir, attaches the programs to Config.CgroupPath with pinned
// links, and Apply writes the difference between what the maps hold and the
// State, in an order that never exposes a half-written service.
//
// Apply reads the maps, not a cache: the first Apply after Open (and the
// next after any failed Apply, and every DefaultFullEvery-th) reads every
// entry and writes the difference. In between, the services that differ
// from the last applied State are re-read from the maps entry by entry and
// rewritten, so that a change to 10k of 100k services does not read 2M
// entries.
//
// For the e2e cluster and the ADS client: give each local pod its cgroup
// (Workload.Cgroup) so connects from it are attributed to its identity;
// register the node's own IP as a Workload with Identity IdentityHost so
// that traffic from the node proxy passes L4 policy at the pods.
//
// Maps are reached through the small Table interface, with the kernel
// implementation, an in-memory fake (NewFakeMaps) and a fault-injecting
// wrapper (FaultyMaps), so that the diff and its write order are unit
// tested without a kernel and the real kernel path is tested beside them.
package nodeagent
