package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// prefixFamily starts every run prefix; a prefix is the family and four
// lowercase letters or digits.
const prefixFamily = "nmt"

// ownerDir holds one file per live run, named after its prefix and holding
// the owning process ID.
const ownerDir = "/run/nodemesh-e2e"

var prefixRE = regexp.MustCompile(`^` + prefixFamily + `[a-z0-9]{4}$`)

// claim records that this process owns prefix; it fails when another run
// holds it. It is written before any resource of the run is created, so a
// resource without a live owner is a leftover.
func claim(prefix string) error {
	if err := os.MkdirAll(ownerDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", ownerDir, err)
	}
	f, err := os.OpenFile(filepath.Join(ownerDir, prefix), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("claim run prefix %s: %w", prefix, err)
	}
	defer f.Close()
	if _, err := f.WriteString(strconv.Itoa(os.Getpid())); err != nil {
		return fmt.Errorf("claim run prefix %s: %w", prefix, err)
	}
	return nil
}

// alive reports whether the run that claimed prefix is still running.
func alive(prefix string) bool {
	data, err := os.ReadFile(filepath.Join(ownerDir, prefix))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

// runPrefix returns the run prefix a resource name starts with.
func runPrefix(name string) (string, bool) {
	if len(name) < len(prefixFamily)+4 {
		return "", false
	}
	p := name[:len(prefixFamily)+4]
	rest := name[len(p):]
	if !prefixRE.MatchString(p) || (rest != "" && rest[0] != '-') {
		return "", false
	}
	return p, true
}

// Sweep removes the namespaces, cgroups and bpffs pins of runs whose owner
// process is gone (a crashed or killed `go test`). Runs still alive, in this
// or another process, are left alone.
func Sweep() error {
	// List resources before reading owners: a resource that exists now was
	// claimed before it was made, so a live owner is seen below.
	found := map[string]bool{}
	names, err := listNetns()
	if err != nil {
		return err
	}
	for _, n := range names {
		if p, ok := runPrefix(n); ok {
			found[p] = true
		}
	}
	if mount, err := CgroupMount(); err == nil {
		addPrefixes(found, mount)
	}
	addPrefixes(found, BPFFS)
	addPrefixes(found, os.TempDir())
	addPrefixes(found, ownerDir)
	var errs []error
	for p := range found {
		if alive(p) {
			continue
		}
		if err := removeRun(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func addPrefixes(found map[string]bool, dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if p, ok := runPrefix(e.Name()); ok {
			found[p] = true
		}
	}
}

// removeRun deletes every resource named after prefix: processes in its
// cgroups, namespaces, cgroup directories, bpffs pins, and its owner file.
func removeRun(prefix string) error {
	var errs []error
	mount, err := CgroupMount()
	if err == nil {
		// Kill first so nothing holds a namespace or cgroup.
		errs = append(errs, removeCgroupTree(filepath.Join(mount, prefix)))
	}
	names, err := listNetns()
	errs = append(errs, err)
	for _, n := range names {
		if p, ok := runPrefix(n); ok && p == prefix {
			errs = append(errs, delNetns(context.Background(), n))
		}
	}
	if ents, err := os.ReadDir(BPFFS); err == nil {
		for _, e := range ents {
			if p, ok := runPrefix(e.Name()); ok && p == prefix {
				errs = append(errs, os.RemoveAll(filepath.Join(BPFFS, e.Name())))
			}
		}
	}
	scratch, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"-*"))
	for _, d := range scratch {
		errs = append(errs, os.RemoveAll(d))
	}
	if err := os.Remove(filepath.Join(ownerDir, prefix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
