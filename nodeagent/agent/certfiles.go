package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/nodemesh/nodemesh/identity"
)

// The files of one service account in Config.WorkloadCertsDir, as gRPC's
// file_watcher certificate provider reads them (certificate_file,
// private_key_file, ca_certificate_file) and as Istio names them.
const (
	CertChainFile = "cert-chain.pem"
	KeyFile       = "key.pem"
	RootCertFile  = "root-cert.pem"
)

// WorkloadCertsPath is the directory of a service account's files:
// <dir>/<namespace>/<serviceaccount>.
func WorkloadCertsPath(dir, namespace, serviceAccount string) string {
	return filepath.Join(dir, namespace, serviceAccount)
}

// writeFiles writes an SVID and the bundle into the service account's
// directory (0700), each file by rename of a temporary file in the same
// directory, so a reader sees the old or the new file, never half of one.
// The roots go first (they verify peers of the old and the new SVID), then
// the key and the chain.
func (m *svidManager) writeFiles(la localAccount, svid *x509svid.SVID, b *x509bundle.Bundle) error {
	if m.cfg.Dir == "" {
		return nil
	}
	if m.writeHook != nil {
		return m.writeHook(la, svid, func() error { return m.writeFilesNow(la, svid, b) })
	}
	return m.writeFilesNow(la, svid, b)
}

func (m *svidManager) writeFilesNow(la localAccount, svid *x509svid.SVID, b *x509bundle.Bundle) error {
	chain, key, roots, err := identity.Update{SVID: svid, Bundle: b}.PEM()
	if err != nil {
		return err
	}
	dir := WorkloadCertsPath(m.cfg.Dir, la.Namespace, la.ServiceAccount)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("workload certs for %s: %w", la.ID, err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{RootCertFile, roots, 0o644}, {KeyFile, key, 0o600}, {CertChainFile, chain, 0o644}} {
		if err := identity.WriteFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("workload certs for %s: %w", la.ID, err)
		}
	}
	return nil
}

// removeFiles deletes a service account's files and then its directory and
// its namespace's, when empty. Nothing else there is touched.
func (m *svidManager) removeFiles(namespace, serviceAccount string) error {
	if m.cfg.Dir == "" {
		return nil
	}
	dir := WorkloadCertsPath(m.cfg.Dir, namespace, serviceAccount)
	var errs []error
	for _, name := range []string{CertChainFile, KeyFile, RootCertFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	_ = os.Remove(dir)               // only if empty
	_ = os.Remove(filepath.Dir(dir)) // the namespace's, only if empty
	return errors.Join(errs...)
}

// pruneStaleFiles removes the files of service accounts that are not on
// the node (left by a previous run): called once the first resource set
// says which are.
func (m *svidManager) pruneStaleFiles() {
	if m.cfg.Dir == "" {
		return
	}
	m.mu.Lock()
	keep := map[string]bool{}
	for _, a := range m.want {
		keep[WorkloadCertsPath(m.cfg.Dir, a.Namespace, a.ServiceAccount)] = true
	}
	m.mu.Unlock()
	namespaces, err := os.ReadDir(m.cfg.Dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("listing workload certificate files", "dir", m.cfg.Dir, "error", err)
		}
		return
	}
	for _, ns := range namespaces {
		if !ns.IsDir() {
			continue
		}
		sas, err := os.ReadDir(filepath.Join(m.cfg.Dir, ns.Name()))
		if err != nil {
			continue
		}
		for _, sa := range sas {
			if !sa.IsDir() || keep[WorkloadCertsPath(m.cfg.Dir, ns.Name(), sa.Name())] {
				continue
			}
			m.log.Info("removing workload certificate files of a service account not on the node", "namespace", ns.Name(), "service_account", sa.Name())
			if err := m.removeFiles(ns.Name(), sa.Name()); err != nil {
				m.log.Warn("removing stale workload certificate files", "namespace", ns.Name(), "service_account", sa.Name(), "error", err)
			}
		}
	}
}
