package kubetoken

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodemesh/nodemesh/identity"
)

// RootCertKey is the ConfigMap key holding the PEM trust bundle (Istio's
// istio-ca-root-cert ConfigMap uses the same key).
const RootCertKey = "root-cert.pem"

// DefaultRootCertConfigMap is the ConfigMap meshd publishes its bundle in.
const DefaultRootCertConfigMap = "nodemesh-ca-root"

// BundleSource is what the publisher needs of a CA (*identity.CA).
type BundleSource interface {
	Bundle() *x509bundle.Bundle
}

// PublisherConfig configures a BundlePublisher. Client, Namespace, Name and
// Bundle are required.
type PublisherConfig struct {
	// Client writes the ConfigMap (get, create and update on configmaps in
	// Namespace).
	Client          kubernetes.Interface
	Namespace, Name string
	Bundle          BundleSource
	// Interval between checks of the bundle and the ConfigMap (default
	// 30s): a root rotation, an expired old root or an edited or deleted
	// ConfigMap is corrected within it.
	Interval time.Duration
	Logger   *slog.Logger
}

// Validate reports an unusable configuration.
func (c PublisherConfig) Validate() error {
	switch {
	case c.Client == nil:
		return errors.New("bundle publisher: no Client")
	case c.Namespace == "" || c.Name == "":
		return errors.New("bundle publisher: Namespace and Name of the ConfigMap are required")
	case c.Bundle == nil:
		return errors.New("bundle publisher: no Bundle")
	case c.Interval < 0:
		return fmt.Errorf("bundle publisher: negative Interval %v", c.Interval)
	}
	return nil
}

// BundlePublisher keeps the PEM of a CA's X.509 authorities in a ConfigMap
// under RootCertKey. It writes only when the content differs, so replicas
// of meshd sharing one CA may all run it: they write the same bytes.
type BundlePublisher struct {
	cfg PublisherConfig
}

// NewBundlePublisher checks cfg and returns the publisher; it does nothing
// until Run or Publish.
func NewBundlePublisher(cfg PublisherConfig) (*BundlePublisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Interval == 0 {
		cfg.Interval = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &BundlePublisher{cfg: cfg}, nil
}

// Run publishes at once and then every Interval until ctx ends; failures
// are logged and retried at the next tick. It returns nil when ctx ends.
func (p *BundlePublisher) Run(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		if changed, err := p.Publish(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.cfg.Logger.Warn("trust bundle not published", "configmap", p.cfg.Namespace+"/"+p.cfg.Name, "err", err)
		} else if changed {
			p.cfg.Logger.Info("trust bundle published", "configmap", p.cfg.Namespace+"/"+p.cfg.Name)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Publish makes the ConfigMap hold the current bundle, creating it if it is
// missing. It reports whether it wrote anything.
func (p *BundlePublisher) Publish(ctx context.Context) (bool, error) {
	roots := p.cfg.Bundle.Bundle().X509Authorities()
	if len(roots) == 0 {
		return false, errors.New("publish trust bundle: the bundle has no X.509 authorities")
	}
	pem := string(identity.EncodeCertsPEM(roots))
	cms := p.cfg.Client.CoreV1().ConfigMaps(p.cfg.Namespace)
	cm, err := cms.Get(ctx, p.cfg.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: p.cfg.Name, Namespace: p.cfg.Namespace,
				Labels: map[string]string{"app.kubernetes.io/managed-by": "meshd"}},
			Data: map[string]string{RootCertKey: pem},
		}
		if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return false, fmt.Errorf("publish trust bundle: create configmap %s/%s: %w", p.cfg.Namespace, p.cfg.Name, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("publish trust bundle: get configmap %s/%s: %w", p.cfg.Namespace, p.cfg.Name, err)
	}
	if cm.Data[RootCertKey] == pem {
		return false, nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[RootCertKey] = pem
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("publish trust bundle: update configmap %s/%s: %w", p.cfg.Namespace, p.cfg.Name, err)
	}
	return true, nil
}
