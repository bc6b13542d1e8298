package kubetoken

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"

	"github.com/nodemesh/nodemesh/identity"
)

// DefaultAudience is the audience the agents' projected tokens are issued
// for; a token for any other audience (e.g. the API server's own) is
// refused, so a token meant for another service cannot be replayed here.
const DefaultAudience = "nodemesh"

// Extra keys of a pod-bound service account token's user info (TokenReview
// status.user.extra).
const (
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
)

// Config configures an Authenticator. Client and ServiceAccount are
// required.
type Config struct {
	// Client creates the TokenReviews (meshd's ServiceAccount needs create
	// on tokenreviews.authentication.k8s.io).
	Client kubernetes.Interface
	// Audience the tokens must be issued for (default DefaultAudience).
	Audience string
	// ServiceAccount of the node agents, "namespace/name".
	ServiceAccount string
	// TrustDomain of the agent identity returned (identity.AgentID).
	TrustDomain spiffeid.TrustDomain
}

// Validate reports an unusable configuration.
func (c Config) Validate() error {
	if c.Client == nil {
		return errors.New("kubetoken: no Client")
	}
	if _, _, err := splitServiceAccount(c.ServiceAccount); err != nil {
		return err
	}
	if c.TrustDomain.IsZero() {
		return errors.New("kubetoken: no TrustDomain")
	}
	return nil
}

func splitServiceAccount(sa string) (ns, name string, err error) {
	ns, name, ok := strings.Cut(sa, "/")
	if !ok {
		return "", "", fmt.Errorf("kubetoken: ServiceAccount %q: want namespace/name", sa)
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return "", "", fmt.Errorf("kubetoken: ServiceAccount %q: namespace: %s", sa, errs[0])
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", "", fmt.Errorf("kubetoken: ServiceAccount %q: name: %s", sa, errs[0])
	}
	return ns, name, nil
}

// Authenticator turns a node agent's pod-bound service account token into
// the agent identity of the pod's node. It implements
// identity.TokenAuthenticator.
type Authenticator struct {
	cfg      Config
	username string // system:serviceaccount:<ns>:<name>
}

var _ identity.TokenAuthenticator = (*Authenticator)(nil)

// New checks cfg and returns an Authenticator.
func New(cfg Config) (*Authenticator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	ns, name, _ := splitServiceAccount(cfg.ServiceAccount)
	return &Authenticator{cfg: cfg, username: "system:serviceaccount:" + ns + ":" + name}, nil
}

// AuthenticateToken reviews token with the API server and accepts it only
// if it is authenticated for the audience, belongs to the agents'
// ServiceAccount and is bound to a pod on exactly one valid node. The error
// names the rule that failed; it never contains the token.
func (a *Authenticator) AuthenticateToken(ctx context.Context, token string) (identity.Caller, error) {
	// Service account tokens are JWTs: anything else costs no review.
	if strings.Count(token, ".") != 2 {
		return identity.Caller{}, errors.New("token is not a JWT")
	}
	tr, err := a.cfg.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{a.cfg.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		// The reason only: the caller is not yet authenticated, and the
		// API error names the server and meshd's permissions.
		reason := string(apierrors.ReasonForError(err))
		if reason == "" {
			reason = "no answer from the API server"
		}
		return identity.Caller{}, fmt.Errorf("token review failed: %s", reason)
	}
	node, err := a.check(tr.Status)
	if err != nil {
		return identity.Caller{}, err
	}
	return identity.Caller{ID: identity.AgentID(a.cfg.TrustDomain), Node: node}, nil
}

// check applies the rules to a TokenReview's status and returns the node.
func (a *Authenticator) check(st authenticationv1.TokenReviewStatus) (string, error) {
	if !st.Authenticated {
		if st.Error != "" {
			return "", fmt.Errorf("token not authenticated: %s", st.Error)
		}
		return "", errors.New("token not authenticated")
	}
	if !slices.Contains(st.Audiences, a.cfg.Audience) {
		return "", fmt.Errorf("token not valid for audience %q (valid for %q)", a.cfg.Audience, st.Audiences)
	}
	if st.User.Username != a.username {
		return "", fmt.Errorf("token of %q, want the node agents' %q", st.User.Username, a.username)
	}
	if len(st.User.Extra[ExtraPodName]) != 1 {
		return "", fmt.Errorf("token of %s is not bound to a pod (no %s; legacy and unbound tokens are refused)", a.username, ExtraPodName)
	}
	nodes := st.User.Extra[ExtraNodeName]
	if len(nodes) != 1 {
		return "", fmt.Errorf("token of pod %s names %d nodes (%s), want one", st.User.Extra[ExtraPodName][0], len(nodes), ExtraNodeName)
	}
	if err := identity.ValidNodeName(nodes[0]); err != nil {
		return "", fmt.Errorf("token of pod %s: %w", st.User.Extra[ExtraPodName][0], err)
	}
	return nodes[0], nil
}
