package kube

import (
	"encoding/json"
	"fmt"
	"regexp"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nodemesh/nodemesh/config"
)

// origin of every object and diagnostic from the API server (config.Origin
// documents File "k8s"; the object's key says which one).
var origin = config.Origin{File: "k8s"}

// coreObject wraps a typed informer object. The object is shared with the
// informer cache, which never modifies it, and the store treats it as
// read-only.
func coreObject(obj any) (*config.Object, bool) {
	var kind config.Kind
	apiVersion := "v1"
	var m metav1.Object
	switch o := obj.(type) {
	case *corev1.Namespace:
		kind, m = config.KindNamespace, o
	case *corev1.Service:
		kind, m = config.KindService, o
	case *corev1.Pod:
		kind, m = config.KindPod, o
	case *corev1.ServiceAccount:
		kind, m = config.KindServiceAccount, o
	case *discoveryv1.EndpointSlice:
		kind, m, apiVersion = config.KindEndpointSlice, o, "discovery.k8s.io/v1"
	default:
		return nil, false
	}
	return &config.Object{
		Key:         config.Key{Kind: kind, Namespace: m.GetNamespace(), Name: m.GetName()},
		APIVersion:  apiVersion,
		Labels:      m.GetLabels(),
		Annotations: m.GetAnnotations(),
		Origin:      origin,
		Spec:        obj,
	}, true
}

// decoded is the outcome of decoding one custom resource at one
// resourceVersion; it is kept so an unchanged object is not decoded again.
type decoded struct {
	resourceVersion string
	obj             *config.Object      // nil when the object was rejected
	diags           []config.Diagnostic // every diagnostic, infos included
	ref             corev1.ObjectReference
}

// lineSuffixRE matches the " (line N)" the YAML loader adds to messages: the
// JSON handed to the decoder is a single line nobody wrote, so it says
// nothing.
var lineSuffixRE = regexp.MustCompile(` \(line \d+\)$`)

// decodeCustom decodes a custom resource with config's decoder, the one the
// file source uses.
func decodeCustom(u *unstructured.Unstructured) decoded {
	d := decoded{
		resourceVersion: u.GetResourceVersion(),
		ref: corev1.ObjectReference{
			APIVersion: u.GetAPIVersion(), Kind: u.GetKind(),
			Namespace: u.GetNamespace(), Name: u.GetName(),
			UID: types.UID(u.GetUID()), ResourceVersion: u.GetResourceVersion(),
		},
	}
	key := config.Key{Kind: config.Kind(u.GetKind()), Namespace: u.GetNamespace(), Name: u.GetName()}
	js, err := json.Marshal(u.Object)
	if err != nil {
		d.diags = []config.Diagnostic{{Severity: config.SeverityError, Origin: origin, Object: key,
			Message: fmt.Sprintf("encode object as JSON: %v", err)}}
		return d
	}
	objs, diags := config.Decode(origin.File, js)
	for i := range diags {
		diags[i].Origin = origin
		diags[i].Message = lineSuffixRE.ReplaceAllString(diags[i].Message, "")
		if diags[i].Object.Kind == "" {
			diags[i].Object = key
		}
	}
	d.diags = diags
	switch {
	case config.HasErrors(diags):
	case len(objs) == 1:
		d.obj = objs[0]
		d.obj.Origin = origin
	default:
		d.diags = append(d.diags, config.Diagnostic{Severity: config.SeverityError, Origin: origin, Object: key,
			Message: fmt.Sprintf("decoder returned %d objects, want 1", len(objs))})
	}
	return d
}

// stripManagedFields drops metadata.managedFields, which nodemesh never reads,
// before objects enter the informer caches (it is often the largest part).
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
