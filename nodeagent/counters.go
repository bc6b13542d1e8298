package nodeagent

import (
	"fmt"

	"github.com/nodemesh/nodemesh/bpf"
)

// ServiceCounters are per-service connect counters, summed over CPUs.
type ServiceCounters struct {
	Connects  uint64 // connects/sends load balanced to a backend
	Redirects uint64 // connects redirected to the node proxy
	NoBackend uint64 // connects to a service without a usable backend
}

// VerdictCounters count L4 policy decisions of one hook.
type VerdictCounters struct {
	Allowed uint64
	Denied  uint64
}

// Counters are the data plane counters, summed over CPUs.
type Counters struct {
	Services map[ServiceKey]ServiceCounters
	Connect  VerdictCounters // cgroup/connect4/6 (local clients)
	Sendmsg  VerdictCounters // cgroup/sendmsg4/6 (unconnected UDP)
	Ingress  VerdictCounters // cgroup_skb/ingress (at the destination)
}

// Counters reads the per-CPU counters.
func (d *Dataplane) Counters() (Counters, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := Counters{Services: map[ServiceKey]ServiceCounters{}}
	var k bpf.MeshSvcKey
	var per []bpf.MeshSvcStats
	it := d.coll.Maps[bpf.MeshMapServiceStats].Iterate()
	for it.Next(&k, &per) {
		var sc ServiceCounters
		for _, p := range per {
			sc.Connects += p.Connects
			sc.Redirects += p.Redirects
			sc.NoBackend += p.NoBackend
		}
		c.Services[ServiceKey{VIP: k.Vip.Netip(), Port: bpf.NetPort(k.Port), Proto: Proto(k.Proto)}] = sc
	}
	if err := it.Err(); err != nil {
		return c, fmt.Errorf("read map %s: %w", bpf.MeshMapServiceStats, err)
	}
	hooks := []*VerdictCounters{bpf.HookConnect: &c.Connect, bpf.HookSendmsg: &c.Sendmsg, bpf.HookIngress: &c.Ingress}
	for hook, vc := range hooks {
		for denied := 0; denied < 2; denied++ {
			var vals []uint64
			if err := d.coll.Maps[bpf.MeshMapVerdictStats].Lookup(uint32(hook*2+denied), &vals); err != nil {
				return c, fmt.Errorf("read map %s: %w", bpf.MeshMapVerdictStats, err)
			}
			var sum uint64
			for _, v := range vals {
				sum += v
			}
			if denied == 1 {
				vc.Denied = sum
			} else {
				vc.Allowed = sum
			}
		}
	}
	return c, nil
}
