package main

import (
	"errors"
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/config/kube"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/identity/kubetoken"
	"github.com/nodemesh/nodemesh/xds"
)

// kubeFlags selects the Kubernetes API as the config source.
type kubeFlags struct {
	enabled        bool
	kubeconfig     string // "" = in-cluster
	namespace      string
	leaseNamespace string
	leaseName      string
	leaseIdentity  string

	// Node agents' first certificate (token bootstrap) and the trust
	// bundle they verify meshd with.
	agentServiceAccount string          // namespace/name
	agentTokenAudience  string          // "" disables token bootstrap
	rootCertConfigMap   string          // "" disables publishing
	explicit            map[string]bool // flags set on the command line
}

func (k kubeFlags) on() bool { return k.enabled || k.kubeconfig != "" }

// check refuses flags that would be silently ignored.
func (k kubeFlags) check() error {
	switch {
	case !k.on() && (k.namespace != "" || k.leaseNamespace != "" || k.leaseIdentity != ""):
		return errors.New("--kube-namespace and --lease-* need --kube")
	case (k.leaseNamespace == "") != (k.leaseIdentity == ""):
		return errors.New("--lease-namespace and --lease-identity go together (status Events are written only by the elected replica)")
	case !k.on() && (k.explicit["agent-service-account"] || k.explicit["agent-token-audience"] || k.explicit["root-cert-configmap"]):
		return errors.New("--agent-service-account, --agent-token-audience and --root-cert-configmap need --kube (without it there is no token bootstrap)")
	case k.explicit["root-cert-configmap"] && k.rootCertConfigMap != "" && k.leaseNamespace == "":
		return errors.New("--root-cert-configmap needs --lease-namespace, the ConfigMap's namespace")
	}
	return nil
}

func (k kubeFlags) restConfig() (*rest.Config, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", k.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	return rc, nil
}

// agentBootstrap wires, with --kube and ADS over TLS, what lets node agents
// in the cluster get their first certificate: TokenReview of their
// pod-bound service account tokens into sec.Tokens, and the publisher of
// the trust bundle ConfigMap (nil when --root-cert-configmap is empty or
// there is no --lease-namespace to hold it). Every replica publishes (they
// share the CA, so they write the same bytes).
func (k kubeFlags) agentBootstrap(ca *identity.CA, sec *xds.ControlPlaneSecurity, log *slog.Logger) (*kubetoken.BundlePublisher, error) {
	rc, err := k.restConfig()
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	if k.agentTokenAudience == "" {
		log.Info("token bootstrap of node agents off (--agent-token-audience is empty)")
	} else {
		a, err := kubetoken.New(kubetoken.Config{Client: client, Audience: k.agentTokenAudience,
			ServiceAccount: k.agentServiceAccount, TrustDomain: ca.TrustDomain()})
		if err != nil {
			return nil, fmt.Errorf("--agent-service-account: %w", err)
		}
		sec.Tokens = a
		log.Info("token bootstrap of node agents on", "service_account", k.agentServiceAccount, "audience", k.agentTokenAudience)
	}
	if k.rootCertConfigMap == "" || k.leaseNamespace == "" {
		log.Info("trust bundle ConfigMap not published (needs --root-cert-configmap and --lease-namespace)")
		return nil, nil
	}
	return kubetoken.NewBundlePublisher(kubetoken.PublisherConfig{Client: client,
		Namespace: k.leaseNamespace, Name: k.rootCertConfigMap, Bundle: ca, Logger: log})
}

// newFeed wires config/kube as meshd's feed. Status write-back (Events) is
// on only with a Lease to elect the replica that writes.
func (k kubeFlags) newFeed(log *slog.Logger) func(*config.Store) (xds.Feed, error) {
	return func(store *config.Store) (xds.Feed, error) {
		klog.SetSlogLogger(log)
		rc, err := k.restConfig()
		if err != nil {
			return nil, err
		}
		var le *kube.LeaderElection
		if k.leaseNamespace != "" && k.leaseIdentity != "" {
			le = &kube.LeaderElection{Namespace: k.leaseNamespace, Name: k.leaseName, Identity: k.leaseIdentity}
		}
		src, err := kube.New(kube.Config{RESTConfig: rc, Store: store, Namespace: k.namespace, LeaderElection: le, Logger: log})
		if err != nil {
			return nil, err
		}
		return src, nil
	}
}
