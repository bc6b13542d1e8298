package meshgen

import (
	"errors"
	"fmt"

	networking "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nodemesh/nodemesh/config"
)

// Params shape a synthetic mesh. The zero value is not valid; Default
// returns the mesh of the DESIGN.md targets.
type Params struct {
	Services            int     // Kubernetes services, each with one HTTP port 8080
	EndpointsPerService int     // pods (and endpoints) per service
	Namespaces          int     // services are spread round-robin over ns-0000...
	Nodes               int     // pods are spread round-robin over node-0000...
	VirtualServiceRatio float64 // fraction of services with an 80/20 VirtualService
}

// Default is 1,000 services, 10 endpoints each, 50 namespaces, 50 nodes and
// 20% of services with an 80/20 VirtualService.
func Default() Params {
	return Params{Services: 1000, EndpointsPerService: 10, Namespaces: 50, Nodes: 50, VirtualServiceRatio: 0.2}
}

// Validate reports parameters that cannot make a mesh.
func (p Params) Validate() error {
	var errs []error
	if p.Services < 1 || p.Services > 60000 {
		errs = append(errs, fmt.Errorf("services %d: want 1..60000", p.Services))
	}
	if p.EndpointsPerService < 0 || p.Services*p.EndpointsPerService > 1<<24 {
		errs = append(errs, fmt.Errorf("endpoints per service %d: want >= 0 and at most 16M in total", p.EndpointsPerService))
	}
	if p.Namespaces < 1 || p.Namespaces > 4096 {
		errs = append(errs, fmt.Errorf("namespaces %d: want 1..4096", p.Namespaces))
	}
	if p.Nodes < 1 {
		errs = append(errs, fmt.Errorf("nodes %d: want >= 1", p.Nodes))
	}
	if p.VirtualServiceRatio < 0 || p.VirtualServiceRatio > 1 {
		errs = append(errs, fmt.Errorf("virtual service ratio %v: want 0..1", p.VirtualServiceRatio))
	}
	return errors.Join(errs...)
}

// NodeName is the name of node i.
func NodeName(i int) string { return fmt.Sprintf("node-%04d", i) }

// NamespaceName is the name of namespace i.
func NamespaceName(i int) string { return fmt.Sprintf("ns-%04d", i) }

// ServiceName is the name of service i; it lives in NamespaceName(i % Namespaces).
func ServiceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// HasVirtualService reports whether service i gets an 80/20 VirtualService:
// the services are picked evenly so that the fraction holds for any prefix.
func (p Params) HasVirtualService(i int) bool {
	r := p.VirtualServiceRatio
	return int(float64(i+1)*r) > int(float64(i)*r)
}

// Generate builds the mesh. It returns an error only for invalid Params.
func Generate(p Params) ([]*config.Object, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("meshgen: %w", err)
	}
	objs := make([]*config.Object, 0, p.Namespaces+p.Services*(3+p.EndpointsPerService))
	for n := range p.Namespaces {
		objs = append(objs, object(config.KindNamespace, "", NamespaceName(n), nil,
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: NamespaceName(n)}}))
	}
	pod := 0
	for i := range p.Services {
		ns, name := NamespaceName(i%p.Namespaces), ServiceName(i)
		objs = append(objs, service(ns, name, i))
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name + "-0", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
		}
		for j := range p.EndpointsPerService {
			podName := fmt.Sprintf("%s-%d", name, j)
			ip := podIP(pod)
			labels := map[string]string{"app": name, "version": fmt.Sprintf("v%d", 1+j%2)}
			objs = append(objs, object(config.KindPod, ns, podName, labels, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: podName, Namespace: ns, Labels: labels},
				Spec: corev1.PodSpec{NodeName: NodeName(pod % p.Nodes), ServiceAccountName: name,
					Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
			}))
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{ip},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: podName},
				NodeName:   ptr(NodeName(pod % p.Nodes)),
			})
			pod++
		}
		objs = append(objs, object(config.KindEndpointSlice, ns, slice.Name, slice.Labels, slice))
		if p.HasVirtualService(i) {
			objs = append(objs, splitRules(ns, name)...)
		}
	}
	return objs, nil
}

func service(ns, name string, i int) *config.Object {
	return object(config.KindService, ns, name, nil, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			ClusterIP: fmt.Sprintf("10.96.%d.%d", i/250, 1+i%250),
			Selector:  map[string]string{"app": name},
			Ports:     []corev1.ServicePort{{Name: "http", Port: 8080, TargetPort: intstr.FromString("http")}},
		},
	})
}

// splitRules is a DestinationRule with subsets v1/v2 and a VirtualService
// sending 80% to v1 and 20% to v2.
func splitRules(ns, name string) []*config.Object {
	dr := &networking.DestinationRule{Host: name, Subsets: []*networking.Subset{
		{Name: "v1", Labels: map[string]string{"version": "v1"}},
		{Name: "v2", Labels: map[string]string{"version": "v2"}},
	}}
	vs := &networking.VirtualService{Hosts: []string{name}, Http: []*networking.HTTPRoute{{
		Route: []*networking.HTTPRouteDestination{
			{Destination: &networking.Destination{Host: name, Subset: "v1"}, Weight: 80},
			{Destination: &networking.Destination{Host: name, Subset: "v2"}, Weight: 20},
		},
	}}}
	return []*config.Object{
		object(config.KindDestinationRule, ns, name, nil, dr),
		object(config.KindVirtualService, ns, name, nil, vs),
	}
}

// podIP gives pod n an address in 10.128.0.0/9.
func podIP(n int) string {
	return fmt.Sprintf("10.%d.%d.%d", 128+n/(250*250), n/250%250, 1+n%250)
}

func object(kind config.Kind, ns, name string, labels map[string]string, spec any) *config.Object {
	apiVersion := "v1"
	switch kind {
	case config.KindEndpointSlice:
		apiVersion = "discovery.k8s.io/v1"
	case config.KindDestinationRule, config.KindVirtualService:
		apiVersion = "networking.istio.io/v1"
	}
	return &config.Object{
		Key:        config.Key{Kind: kind, Namespace: ns, Name: name},
		APIVersion: apiVersion,
		Labels:     labels,
		Origin:     config.Origin{File: "meshgen"},
		Spec:       spec,
	}
}

func ptr[T any](v T) *T { return &v }
