package identity

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// fileStamp identifies a version of a file: a rewrite, a rename over it or
// a new symlink target (kubelet swaps the ..data link of a ConfigMap or
// projected volume) changes it.
type fileStamp struct {
	mod   time.Time
	size  int64
	inode uint64 // 0 where the platform does not say
}

func stat(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.inode = uint64(sys.Ino)
	}
	return st, nil
}

// reloadRoots reads RootsFile when it changed since the last good read. A
// bad file keeps the previous roots (and is read again next time). It
// reports whether new roots were installed.
func (a *AgentCert) reloadRoots() (bool, error) {
	path := a.cfg.RootsFile
	st, err := stat(path)
	if err != nil {
		return false, fmt.Errorf("agent cert: roots file %s: %w", path, err)
	}
	a.mu.RLock()
	same := a.bundle != nil && st == a.rootsStamp
	a.mu.RUnlock()
	if same {
		return false, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("agent cert: roots file %s: %w", path, err)
	}
	roots, err := ParseCertsPEM(data)
	if err == nil && len(roots) == 0 {
		err = errors.New("no certificates")
	}
	if err != nil {
		return false, fmt.Errorf("agent cert: roots file %s: %w", path, err)
	}
	bundle := x509bundle.FromX509Authorities(a.cfg.TrustDomain, roots)
	now := a.cfg.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.bundle, a.rootsStamp = bundle, st
	a.st.Roots = len(roots)
	if a.svid != nil {
		if _, _, err := x509svid.Verify(a.svid.Certificates, bundle, x509svid.WithTime(now)); err != nil {
			// The CA's roots rotated past our certificate: renew now
			// rather than at the half-life (token mode).
			a.forceRenew = true
		}
	}
	return true, nil
}

// reloadFiles reads CertFile and KeyFile when either changed since the last
// good read. The new certificate must verify against the current roots,
// be the agent identity and be bound to the configured node; otherwise the
// previous one stays (a half-written pair is read again next time).
func (a *AgentCert) reloadFiles() (bool, error) {
	certSt, err := stat(a.cfg.CertFile)
	if err != nil {
		return false, fmt.Errorf("agent cert: certificate file %s: %w", a.cfg.CertFile, err)
	}
	keySt, err := stat(a.cfg.KeyFile)
	if err != nil {
		return false, fmt.Errorf("agent cert: key file %s: %w", a.cfg.KeyFile, err)
	}
	a.mu.RLock()
	same := a.svid != nil && certSt == a.certStamp && keySt == a.keyStamp
	bundle := a.bundle
	a.mu.RUnlock()
	if same {
		return false, nil
	}
	svid, err := x509svid.Load(a.cfg.CertFile, a.cfg.KeyFile)
	if err != nil {
		return false, fmt.Errorf("agent cert: load %s and %s: %w", a.cfg.CertFile, a.cfg.KeyFile, err)
	}
	if err := verifyAgentSVID(svid.Certificates, bundle, a.cfg.TrustDomain, a.cfg.Node, a.cfg.Now()); err != nil {
		return false, fmt.Errorf("agent cert: %s (roots %s): %w", a.cfg.CertFile, a.cfg.RootsFile, err)
	}
	a.install(svid, AgentCertFiles)
	a.mu.Lock()
	a.certStamp, a.keyStamp = certSt, keySt
	a.mu.Unlock()
	return true, nil
}

// readToken reads the bearer token; kubelet rewrites the file as it
// rotates the token, so it is read for every request.
func readToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("token file %s holds more than one word", path)
	}
	return tok, nil
}
