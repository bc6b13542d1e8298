package kubetoken

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/nodemesh/nodemesh/identity"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

const agentUser = "system:serviceaccount:nodemesh-system:mesh-agent"

// reviewer answers every TokenReview with status (the request is kept), or
// fails with err. The API server's own behaviour is proven in e2e/kubeapi.
func reviewer(status authenticationv1.TokenReviewStatus, err error, got *authenticationv1.TokenReviewSpec) *fake.Clientset {
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
		*got = tr.Spec
		if err != nil {
			return true, nil, err
		}
		out := tr.DeepCopy()
		out.Status = status
		return true, out, nil
	})
	return c
}

func boundStatus(user, aud string, extra map[string]authenticationv1.ExtraValue) authenticationv1.TokenReviewStatus {
	return authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{aud},
		User: authenticationv1.UserInfo{Username: user, Extra: extra}}
}

func TestAuthenticateToken(t *testing.T) {
	pod := authenticationv1.ExtraValue{"mesh-agent-x1"}
	for _, tc := range []struct {
		name    string
		status  authenticationv1.TokenReviewStatus
		apiErr  error
		node    string // want; "" = refused
		errWant string
	}{
		{"bound token of the agent SA", boundStatus(agentUser, "nodemesh", map[string]authenticationv1.ExtraValue{
			ExtraPodName: pod, ExtraNodeName: {"node-a"}}), nil, "node-a", ""},
		{"not authenticated", authenticationv1.TokenReviewStatus{Error: "invalid bearer token"}, nil, "", "not authenticated: invalid bearer token"},
		{"wrong audience", boundStatus(agentUser, "https://kubernetes.default.svc", map[string]authenticationv1.ExtraValue{
			ExtraPodName: pod, ExtraNodeName: {"node-a"}}), nil, "", `audience "nodemesh"`},
		{"another service account", boundStatus("system:serviceaccount:default:web", "nodemesh", map[string]authenticationv1.ExtraValue{
			ExtraPodName: pod, ExtraNodeName: {"node-a"}}), nil, "", "system:serviceaccount:default:web"},
		{"not bound to a pod", boundStatus(agentUser, "nodemesh", nil), nil, "", "not bound to a pod"},
		{"no node", boundStatus(agentUser, "nodemesh", map[string]authenticationv1.ExtraValue{ExtraPodName: pod}), nil, "", "names 0 nodes"},
		{"two nodes", boundStatus(agentUser, "nodemesh", map[string]authenticationv1.ExtraValue{
			ExtraPodName: pod, ExtraNodeName: {"node-a", "node-b"}}), nil, "", "names 2 nodes"},
		{"invalid node name", boundStatus(agentUser, "nodemesh", map[string]authenticationv1.ExtraValue{
			ExtraPodName: pod, ExtraNodeName: {"Node_A"}}), nil, "", `node name "Node_A"`},
		{"API error", authenticationv1.TokenReviewStatus{}, errors.New("connection refused"), "", "token review failed: no answer from the API server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var spec authenticationv1.TokenReviewSpec
			a, err := New(Config{Client: reviewer(tc.status, tc.apiErr, &spec), ServiceAccount: "nodemesh-system/mesh-agent", TrustDomain: td})
			if err != nil {
				t.Fatal(err)
			}
			c, err := a.AuthenticateToken(context.Background(), "secret.token.value")
			if spec.Token != "secret.token.value" || len(spec.Audiences) != 1 || spec.Audiences[0] != DefaultAudience {
				t.Errorf("TokenReview spec = token %q audiences %q; want the token and [%s]", spec.Token, spec.Audiences, DefaultAudience)
			}
			if tc.node != "" {
				if err != nil || c.Node != tc.node || c.ID != identity.AgentID(td) {
					t.Fatalf("got %+v, %v; want node %s as %s", c, err, tc.node, identity.AgentID(td))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.errWant) {
				t.Fatalf("got %+v, %v; want an error containing %q", c, err, tc.errWant)
			}
			if strings.Contains(err.Error(), "secret.token.value") {
				t.Fatalf("error echoes the token: %v", err)
			}
		})
	}
}

// A token that is not a JWT costs no TokenReview.
func TestAuthenticateTokenNotJWT(t *testing.T) {
	var spec authenticationv1.TokenReviewSpec
	a, err := New(Config{Client: reviewer(authenticationv1.TokenReviewStatus{Authenticated: true}, nil, &spec),
		ServiceAccount: "nodemesh-system/mesh-agent", TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.AuthenticateToken(context.Background(), "opaque-token"); err == nil || !strings.Contains(err.Error(), "not a JWT") {
		t.Fatalf("AuthenticateToken(opaque) = %v; want not a JWT", err)
	}
	if spec.Token != "" {
		t.Fatal("a TokenReview was made for a token that is not a JWT")
	}
}

func TestConfigValidate(t *testing.T) {
	c := fake.NewClientset()
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"ok", Config{Client: c, ServiceAccount: "nodemesh/mesh-agent", TrustDomain: td}, true},
		{"no client", Config{ServiceAccount: "nodemesh/mesh-agent", TrustDomain: td}, false},
		{"no service account", Config{Client: c, TrustDomain: td}, false},
		{"service account without namespace", Config{Client: c, ServiceAccount: "mesh-agent", TrustDomain: td}, false},
		{"bad namespace", Config{Client: c, ServiceAccount: "Node_Mesh/mesh-agent", TrustDomain: td}, false},
		{"no trust domain", Config{Client: c, ServiceAccount: "nodemesh/mesh-agent"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
