package translate

import (
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
)

// Proxyless gRPC clients dial xds:///<host>:<port> and ask LDS for exactly
// "<host>:<port>" (the target's authority); the route configuration's
// virtual host must match that same string. A client may use any name it
// could resolve through cluster DNS from its namespace, so every service
// port visible to the client's namespace gets an API listener per name:
// <name>.<ns>.svc.cluster.local:<port>, <name>.<ns>.svc:<port>,
// <name>.<ns>:<port>, and <name>:<port> from the same namespace (for
// ServiceEntry hosts: <host>:<port>). A service with a single port also
// answers for the names without port. All names of a service port share
// one route configuration named <fqdn>:<port>.

// grpcNames lists the LDS names of a service port for a client namespace.
func grpcNames(svc *service, sp servicePort, clientNS string) []string {
	hosts := []string{svc.Hostname}
	if !svc.ServiceEntry {
		hosts = append(hosts, svc.Name+"."+svc.Namespace+".svc", svc.Name+"."+svc.Namespace)
		if clientNS == svc.Namespace {
			hosts = append(hosts, svc.Name)
		}
	}
	var out []string
	for _, h := range hosts {
		out = append(out, h+":"+portString(sp.Port))
		if len(svc.Ports) == 1 {
			out = append(out, h)
		}
	}
	return out
}

// proxyless builds API listeners and route configurations for a gRPC client
// in namespace s.ns.
func (s *scope) proxyless() ([]*listenerv3.Listener, []virtualHostGroup) {
	var listeners []*listenerv3.Listener
	var groups []virtualHostGroup
	seen := map[string]bool{}
	for _, svc := range s.services {
		for _, sp := range svc.Ports {
			rcName := svc.Hostname + ":" + portString(sp.Port)
			names := grpcNames(svc, sp, s.ns)
			var fresh []string
			for _, n := range names {
				if !seen[n] {
					seen[n] = true
					fresh = append(fresh, n)
				}
			}
			if len(fresh) == 0 {
				continue
			}
			hcm := mustAny(httpConnectionManager("grpc", rcName))
			for _, n := range fresh {
				listeners = append(listeners, &listenerv3.Listener{
					Name:        n,
					ApiListener: &listenerv3.ApiListener{ApiListener: hcm},
				})
			}
			vh := virtualHost{Name: rcName, Domains: fresh, Routes: s.httpRoutes(svc, sp)}
			groups = append(groups, virtualHostGroup{Name: rcName, VirtualHosts: []virtualHost{vh}})
		}
	}
	return listeners, groups
}
