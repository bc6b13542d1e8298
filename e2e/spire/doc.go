// Package spire runs a real SPIRE server and agent (v1.13.3) for tests:
// the upstream that identity.SPIRE talks to. build.sh (make spire) builds the
// binaries into a cache outside the repository; Binaries finds them there.
//
// The helpers start spire-server (sqlite datastore, join_token node
// attestation, in-memory keys) on 127.0.0.1 with its API on a unix socket,
// and spire-agent (join token, insecure bootstrap, unix workload attestor)
// with its Workload API and admin (Delegated Identity API) sockets in
// separate directories, all under a per-test temporary directory.
//
// TestMeshOnSPIRE runs nodemesh in SPIRE mode on them: the real meshd
// binary (as another uid, told apart by unix:uid selectors) and the real
// mesh-agent binary (root, eBPF on a test cgroup and pin directory), with
// SVIDs only from SPIRE. Its pods are processes in cgroups below the
// agent's (each as its own uid), which the agent names to SPIRE by PID.
package spire
