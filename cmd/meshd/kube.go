package main

import (
	"errors"
	"log/slog"

	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/config/kube"
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
}

func (k kubeFlags) on() bool { return k.enabled || k.kubeconfig != "" }

// check refuses flags that would be silently ignored.
func (k kubeFlags) check() error {
	switch {
	case !k.on() && (k.namespace != "" || k.leaseNamespace != "" || k.leaseIdentity != ""):
		return errors.New("--kube-namespace and --lease-* need --kube")
	case (k.leaseNamespace == "") != (k.leaseIdentity == ""):
		return errors.New("--lease-namespace and --lease-identity go together (status Events are written only by the elected replica)")
	}
	return nil
}

// newFeed wires config/kube as meshd's feed. Status write-back (Events) is
// on only with a Lease to elect the replica that writes.
func (k kubeFlags) newFeed(log *slog.Logger) func(*config.Store) (xds.Feed, error) {
	return func(store *config.Store) (xds.Feed, error) {
		klog.SetSlogLogger(log)
		rc, err := clientcmd.BuildConfigFromFlags("", k.kubeconfig)
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
