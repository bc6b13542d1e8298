package identity

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File names of Istio's cacerts layout (the "cacerts" secret of a plugged-in
// CA), used both to load a plugged-in CA and to persist a generated root.
const (
	CACertFile    = "ca-cert.pem"    // the signing certificate (root or intermediate)
	CAKeyFile     = "ca-key.pem"     // its private key (PKCS#8, SEC 1 or PKCS#1)
	RootCertFile  = "root-cert.pem"  // every trusted root, current first
	CertChainFile = "cert-chain.pem" // ca-cert.pem and the intermediates up to the root
)

// load reads the CA from cfg.Dir. It reports false when the directory holds
// no ca-cert.pem yet.
func (ca *CA) load() (bool, error) {
	dir := ca.cfg.Dir
	certPath := filepath.Join(dir, CACertFile)
	if _, err := os.Stat(certPath); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	certs, err := readCerts(certPath)
	if err != nil {
		return false, err
	}
	cert := certs[0]
	key, err := readKey(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return false, err
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return false, fmt.Errorf("load ca: %s does not hold the key of %s", filepath.Join(dir, CAKeyFile), certPath)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return false, fmt.Errorf("load ca: %s: certificate %q is not a CA (needs basicConstraints CA:true and keyCertSign)", certPath, cert.Subject)
	}
	rootPath := filepath.Join(dir, RootCertFile)
	roots, err := readCerts(rootPath)
	if err != nil {
		return false, err
	}
	// cert-chain.pem is optional: a self-signed ca-cert.pem needs none.
	var chain []*x509.Certificate
	chainPath := filepath.Join(dir, CertChainFile)
	if _, err := os.Stat(chainPath); err == nil {
		if chain, err = readCerts(chainPath); err != nil {
			return false, err
		}
	}
	var intermediates []*x509.Certificate
	for _, c := range append([]*x509.Certificate{cert}, chain...) {
		if isSelfSigned(c) || containsCert(intermediates, c) {
			continue
		}
		intermediates = append(intermediates, c)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         certPool(roots),
		Intermediates: certPool(intermediates),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		CurrentTime:   ca.cfg.Now(),
	})
	if err != nil {
		return false, fmt.Errorf("load ca: %s does not chain to a root in %s (with %s): %w", certPath, rootPath, chainPath, err)
	}
	// Keep the verified path, in leaf-to-root order, without the root.
	path := chains[0]
	root := path[len(path)-1]
	ca.s = signer{cert: cert, key: key, intermediates: path[:len(path)-1], root: root}
	if isSelfSigned(cert) {
		ca.s.intermediates = nil
	}
	ca.roots = append([]*x509.Certificate{root}, deleteCert(roots, root)...)
	ca.rotatable = isSelfSigned(cert)
	return true, nil
}

// persist writes a CA that owns its root to cfg.Dir (nothing for an
// in-memory or plugged-in CA). The key is written with mode 0600, every file
// atomically.
func (ca *CA) persist() error {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	if ca.cfg.Dir == "" || !ca.rotatable {
		return nil
	}
	if err := os.MkdirAll(ca.cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("persist ca: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.s.key)
	if err != nil {
		return fmt.Errorf("persist ca: marshal key: %w", err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		// The key first: a crash between files leaves a key without its
		// certificate, which load refuses loudly, never a certificate
		// with a stale key.
		{CAKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{RootCertFile, encodeCerts(ca.roots), 0o644},
		{CertChainFile, encodeCerts([]*x509.Certificate{ca.s.cert}), 0o644},
		{CACertFile, encodeCerts([]*x509.Certificate{ca.s.cert}), 0o644},
	}
	for _, f := range files {
		if err := WriteFileAtomic(filepath.Join(ca.cfg.Dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("persist ca: %w", err)
		}
	}
	return nil
}

// WriteFileAtomic replaces path with data (mode perm): a temporary file in
// the same directory, synced, then renamed over path, so that a reader
// sees the old content or the new one, never a part.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}

func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	certs, err := ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("load ca: %s: %w", path, err)
	}
	return certs, nil
}

// ParseCertsPEM parses every CERTIFICATE block of data; it fails on any other
// block type and when there is no certificate at all.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for n := 1; ; n++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("pem block %d: type %q, want CERTIFICATE", n, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pem block %d: %w", n, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, errors.New("trailing data that is not PEM")
	}
	return certs, nil
}

func readKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("load ca: %s: no PEM block found", path)
	}
	var key any
	switch b.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("load ca: %s: PEM block type %q is not a private key", path, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("load ca: %s: %w", path, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("load ca: %s: key type %T cannot sign", path, key)
	}
	return s, nil
}

// EncodeCertsPEM returns the certificates as concatenated PEM blocks.
func EncodeCertsPEM(certs []*x509.Certificate) []byte { return encodeCerts(certs) }

func encodeCerts(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}) // a bytes.Buffer does not fail
	}
	return buf.Bytes()
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

func deleteCert(certs []*x509.Certificate, c *x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, x := range certs {
		if !x.Equal(c) {
			out = append(out, x)
		}
	}
	return out
}

func certPool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}
