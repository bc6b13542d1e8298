package deploy_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/nodemesh/nodemesh/e2e/kubeapi"
)

const (
	chartDir      = "helm/nodemesh"
	manifestsFile = "manifests/nodemesh.yaml"
	releaseNS     = "nodemesh"
)

// manifestValues are the values manifests/nodemesh.yaml is rendered with.
var manifestValues = map[string]any{"createNamespace": true}

// render renders the chart with the Helm Go SDK, as `helm template nodemesh
// deploy/helm/nodemesh -n nodemesh` does: every template in file name order,
// each behind a "# Source:" line.
func render(t *testing.T, vals map[string]any) (string, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	rv, err := util.ToRenderValues(ch, vals,
		common.ReleaseOptions{Name: "nodemesh", Namespace: releaseNS, Revision: 1, IsInstall: true}, nil)
	if err != nil {
		return "", err
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return "", err
	}
	for name := range files {
		if strings.HasSuffix(name, ".txt") {
			delete(files, name)
		}
	}
	// Helm's own install order (Namespace, ServiceAccount, RBAC, ...
	// workloads), so that `kubectl apply -f` works in one pass.
	_, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("# Rendered from deploy/helm/nodemesh with default values and createNamespace=true.\n")
	b.WriteString("# Do not edit: NODEMESH_UPDATE_MANIFESTS=1 go test ./deploy/ regenerates it.\n")
	for _, m := range manifests {
		b.WriteString("---\n# Source: " + m.Name + "\n" + strings.TrimSpace(m.Content) + "\n")
	}
	return b.String(), nil
}

func mustRender(t *testing.T, vals map[string]any) []*unstructured.Unstructured {
	t.Helper()
	out, err := render(t, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	objs, err := kubeapi.Objects([]byte(out))
	if err != nil {
		t.Fatalf("rendered YAML: %v", err)
	}
	return objs
}

// The checked-in manifests are exactly what the chart renders now.
func TestManifestsUpToDate(t *testing.T) {
	got, err := render(t, manifestValues)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	// kubectl parses strictly: a duplicate key (say, a label set twice by
	// two helpers) is an error there.
	for i, doc := range strings.Split(got, "\n---\n") {
		if _, err := yaml.YAMLToJSONStrict([]byte(doc)); err != nil {
			t.Errorf("rendered document %d is not strict YAML: %v\n%s", i, err, doc)
		}
	}
	if os.Getenv("NODEMESH_UPDATE_MANIFESTS") != "" {
		if err := os.WriteFile(manifestsFile, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", manifestsFile)
		return
	}
	want, err := os.ReadFile(manifestsFile)
	if err != nil {
		t.Fatalf("%v (create it with NODEMESH_UPDATE_MANIFESTS=1 go test ./deploy/)", err)
	}
	if got != string(want) {
		t.Errorf("%s is not the chart's output: run NODEMESH_UPDATE_MANIFESTS=1 go test ./deploy/ and commit", manifestsFile)
	}
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

func TestRenderDefaults(t *testing.T) {
	objs := mustRender(t, nil)
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind()+"/"+o.GetName())
		if o.GetKind() != "ClusterRole" && o.GetKind() != "ClusterRoleBinding" && o.GetNamespace() != releaseNS {
			t.Errorf("%s/%s in namespace %q, want %q", o.GetKind(), o.GetName(), o.GetNamespace(), releaseNS)
		}
	}
	for _, want := range []string{"Deployment/meshd", "PodDisruptionBudget/meshd", "DaemonSet/mesh-agent",
		"Service/meshd", "Service/meshd-debug", "ServiceAccount/meshd", "ServiceAccount/mesh-agent",
		"ClusterRole/nodemesh-meshd", "ClusterRoleBinding/nodemesh-meshd", "Role/meshd-leader-election",
		"RoleBinding/meshd-leader-election", "Role/meshd-ca-root", "RoleBinding/meshd-ca-root"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("rendered objects %v lack %s", kinds, want)
		}
	}
	if slices.Contains(kinds, "Namespace/nodemesh") {
		t.Error("Namespace rendered without createNamespace")
	}
	d := find(objs, "Deployment", "meshd")
	if n, _, _ := unstructured.NestedInt64(d.Object, "spec", "replicas"); n != 2 {
		t.Errorf("meshd replicas %d, want 2", n)
	}
	ds := find(objs, "DaemonSet", "mesh-agent")
	spec, _, _ := unstructured.NestedMap(ds.Object, "spec", "template", "spec")
	if spec["hostNetwork"] != true {
		t.Error("mesh-agent not on the host network")
	}
	c := spec["containers"].([]any)[0].(map[string]any)
	sc := c["securityContext"].(map[string]any)
	add, _, _ := unstructured.NestedStringSlice(sc, "capabilities", "add")
	if sc["privileged"] != false || !slices.Contains(add, "BPF") || !slices.Contains(add, "NET_ADMIN") || !slices.Contains(add, "SYS_ADMIN") {
		t.Errorf("mesh-agent securityContext %v: want not privileged, with BPF, NET_ADMIN and SYS_ADMIN", sc)
	}
	var paths []string
	for _, v := range spec["volumes"].([]any) {
		if p, ok, _ := unstructured.NestedString(v.(map[string]any), "hostPath", "path"); ok {
			paths = append(paths, p)
		}
	}
	if !slices.Contains(paths, "/sys/fs/bpf") || !slices.Contains(paths, "/sys/fs/cgroup") {
		t.Errorf("mesh-agent hostPaths %v, want /sys/fs/bpf and /sys/fs/cgroup", paths)
	}
	if !strings.Contains(yamlOf(t, d), "secretName: nodemesh-ca") {
		t.Error("meshd does not mount the CA Secret nodemesh-ca")
	}
	checkAgentBootstrap(t, objs)
}

// meshd reviews the agents' tokens and publishes its bundle; the agents
// hold a pod-bound token for meshd's audience and the bundle, and pass both
// to mesh-agent.
func checkAgentBootstrap(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	meshd, _, _ := unstructured.NestedSlice(find(objs, "Deployment", "meshd").Object, "spec", "template", "spec", "containers")
	margs, _, _ := unstructured.NestedStringSlice(meshd[0].(map[string]any), "args")
	for _, want := range []string{"--agent-service-account=" + releaseNS + "/mesh-agent", "--agent-token-audience=nodemesh",
		"--root-cert-configmap=nodemesh-ca-root", "--lease-namespace=$(POD_NAMESPACE)"} {
		if !slices.Contains(margs, want) {
			t.Errorf("meshd args %v lack %s", margs, want)
		}
	}
	spec, _, _ := unstructured.NestedMap(find(objs, "DaemonSet", "mesh-agent").Object, "spec", "template", "spec")
	c := spec["containers"].([]any)[0].(map[string]any)
	args, _, _ := unstructured.NestedStringSlice(c, "args")
	for _, want := range []string{"--node=$(NODE_NAME)", "--xds-token=/var/run/nodemesh/token/token", "--xds-root-cert=/var/run/nodemesh/ca/root-cert.pem"} {
		if !slices.Contains(args, want) {
			t.Errorf("mesh-agent args %v lack %s", args, want)
		}
	}
	ds := yamlOf(t, find(objs, "DaemonSet", "mesh-agent"))
	for _, want := range []string{"audience: nodemesh", "expirationSeconds: 3600", "path: token", "name: nodemesh-ca-root",
		"mountPath: /var/run/nodemesh/token", "mountPath: /var/run/nodemesh/ca"} {
		if !strings.Contains(ds, want) {
			t.Errorf("mesh-agent DaemonSet lacks %q", want)
		}
	}
	if !strings.Contains(yamlOf(t, find(objs, "ClusterRole", "nodemesh-meshd")), "tokenreviews") {
		t.Error("meshd's ClusterRole does not allow TokenReviews")
	}
}

// ca.mode=spire: meshd and mesh-agent get their SVIDs from the node's
// SPIRE agent (the agent its workloads' too, through the admin socket);
// none of the built-in CA's flags, Secret, token or bundle ConfigMap.
// Unknown modes are refused.
func TestRenderCAModes(t *testing.T) {
	objs := mustRender(t, map[string]any{"ca": map[string]any{"mode": "spire"}})
	args := func(kind, name string) []string {
		cs, _, _ := unstructured.NestedSlice(find(objs, kind, name).Object, "spec", "template", "spec", "containers")
		a, _, _ := unstructured.NestedStringSlice(cs[0].(map[string]any), "args")
		return a
	}
	margs, aargs := args("Deployment", "meshd"), args("DaemonSet", "mesh-agent")
	for _, want := range []string{"--spire-socket=unix:///run/spire/sockets/agent.sock"} {
		if !slices.Contains(margs, want) {
			t.Errorf("meshd args %v lack %s", margs, want)
		}
	}
	for _, want := range []string{"--spire-socket=unix:///run/spire/sockets/agent.sock", "--spire-admin-socket=unix:///run/spire/admin/admin.sock"} {
		if !slices.Contains(aargs, want) {
			t.Errorf("mesh-agent args %v lack %s", aargs, want)
		}
	}
	for _, a := range slices.Concat(margs, aargs) {
		for _, builtin := range []string{"--ca-dir", "--agent-", "--root-cert-configmap", "--xds-token", "--xds-root-cert"} {
			if strings.HasPrefix(a, builtin) {
				t.Errorf("ca.mode=spire renders the built-in CA's %s", a)
			}
		}
	}
	ds := yamlOf(t, find(objs, "DaemonSet", "mesh-agent"))
	if strings.Contains(ds, "nodemesh-ca-root") || strings.Contains(ds, "serviceAccountToken") {
		t.Error("ca.mode=spire: the agent still mounts the bundle ConfigMap or a token for meshd")
	}
	if !strings.Contains(ds, "hostPID: true") {
		t.Error("ca.mode=spire: the agent does not share the host PID namespace (it asks SPIRE by PID)")
	}
	if strings.Contains(yamlOf(t, find(mustRender(t, nil), "DaemonSet", "mesh-agent")), "hostPID") {
		t.Error("ca.mode=builtin: the agent shares the host PID namespace without need")
	}
	if _, err := render(t, map[string]any{"ca": map[string]any{"mode": "vault"}}); err == nil || !strings.Contains(err.Error(), "ca.mode") {
		t.Errorf("ca.mode=vault: err %v, want one naming ca.mode", err)
	}
}

func yamlOf(t *testing.T, o *unstructured.Unstructured) string {
	t.Helper()
	if o == nil {
		t.Fatal("object not rendered")
	}
	js, err := o.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	out, err := yamlFromJSON(js)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func yamlFromJSON(js []byte) (string, error) {
	out, err := yaml.JSONToYAML(js)
	return string(out), err
}
