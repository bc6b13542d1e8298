package kubeapi

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

//go:embed crds/smi.yaml
var smiCRDs []byte

// SMICRDs returns the SMI CustomResourceDefinitions (split, access and specs
// groups) as YAML.
func SMICRDs() []byte { return bytes.Clone(smiCRDs) }

// IstioCRDs returns the Istio CustomResourceDefinitions shipped in the
// istio.io/api module (kubernetes/customresourcedefinitions.gen.yaml), found
// through `go list -m`.
func IstioCRDs() ([]byte, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api").Output()
	if err != nil {
		return nil, fmt.Errorf("find the istio.io/api module: %w", err)
	}
	path := filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read Istio CRDs: %w", err)
	}
	return data, nil
}

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// DryRun asks the server to validate and admit without persisting
	// (dryRun=All).
	DryRun bool
	// Namespace for namespaced objects without one (default "default").
	Namespace string
}

// Objects splits multi-document YAML (or JSON) into objects, skipping empty
// documents.
func Objects(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("decode document %d: %w", len(objs), err)
		}
		if t := bytes.TrimSpace(raw); len(t) == 0 || bytes.Equal(t, []byte("null")) || bytes.Equal(t, []byte("{}")) {
			continue
		}
		// Through unstructured's own decoder: integers stay int64.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("decode document %d: %w", len(objs), err)
		}
		objs = append(objs, u)
	}
}

// Apply server-side applies every object in data (field manager
// "nodemesh-test", conflicts forced) and returns the objects as the server
// stored them. CRDs among them are waited for until Established, so later
// calls may use their kinds.
func (s *Server) Apply(ctx context.Context, data []byte, opts ApplyOptions) ([]*unstructured.Unstructured, error) {
	objs, err := Objects(data)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(s.Config)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(s.Config)
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	ns := opts.Namespace
	if ns == "" {
		ns = "default"
	}
	var out []*unstructured.Unstructured
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			mapper.Reset() // a CRD applied earlier in this call
			m, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
		if err != nil {
			return out, fmt.Errorf("%s %s: %w", gvk, o.GetName(), err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			if o.GetNamespace() == "" {
				o.SetNamespace(ns)
			}
			ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		js, err := json.Marshal(o.Object)
		if err != nil {
			return out, fmt.Errorf("%s %s: %w", gvk.Kind, o.GetName(), err)
		}
		// Strict, as kubectl: a field the schema does not know is an error.
		po := metav1.PatchOptions{FieldManager: "nodemesh-test", Force: new(true), FieldValidation: "Strict"}
		if opts.DryRun {
			po.DryRun = []string{metav1.DryRunAll}
		}
		got, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, js, po)
		if err != nil {
			return out, fmt.Errorf("apply %s %s/%s: %w", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		}
		out = append(out, got)
		if gvk.Kind == "CustomResourceDefinition" && !opts.DryRun {
			if err := waitEstablished(ctx, ri, o.GetName()); err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

func waitEstablished(ctx context.Context, ri dynamic.ResourceInterface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		crd, err := ri.Get(ctx, name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("get CRD %s: %w", name, err)
		}
		if crd != nil {
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				if c, ok := c.(map[string]any); ok && c["type"] == "Established" && c["status"] == "True" {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s not established: %w", name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// InstallCRDs applies the Istio and SMI CRDs and waits until they are
// established.
func (s *Server) InstallCRDs(t testing.TB) {
	t.Helper()
	istio, err := IstioCRDs()
	if err != nil {
		t.Fatalf("kubeapi: %v", err)
	}
	ctx := context.Background()
	for name, data := range map[string][]byte{"Istio": istio, "SMI": smiCRDs} {
		objs, err := s.Apply(ctx, data, ApplyOptions{})
		if err != nil {
			t.Fatalf("kubeapi: install %s CRDs: %v", name, err)
		}
		t.Logf("kubeapi: installed %d %s CRDs", len(objs), name)
	}
}

// GVR is a shorthand for tests.
func GVR(group, version, resource string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: group, Version: version, Resource: resource}
}

// Dynamic returns a dynamic client for the server.
func (s *Server) Dynamic(t testing.TB) dynamic.Interface {
	t.Helper()
	dyn, err := dynamic.NewForConfig(s.Config)
	if err != nil {
		t.Fatalf("kubeapi: dynamic client: %v", err)
	}
	return dyn
}
