package nodeagent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/nodemesh/nodemesh/bpf"
)

// loadCollection loads the programs over the pinned maps in pinDir/maps.
// When the pins are of another schema (meta version differs, or a map
// definition changed: "map spec is incompatible") it loads fresh maps
// instead, copies the entries of old maps whose layout still fits, and
// returns migrated=true: the caller swaps the programs and then repins.
func loadCollection(pinDir string, log *slog.Logger) (coll *ebpf.Collection, migrated bool, err error) {
	mapDir := filepath.Join(pinDir, "maps")
	if err := os.MkdirAll(mapDir, 0o700); err != nil {
		return nil, false, fmt.Errorf("create pin dir: %w", err)
	}
	spec, err := bpf.LoadMesh()
	if err != nil {
		return nil, false, fmt.Errorf("load program spec: %w", err)
	}
	reason := pinnedIncompatible(spec, mapDir)
	if reason == "" {
		pinned := spec.Copy()
		for name, ms := range pinned.Maps {
			if !strings.HasPrefix(name, ".") {
				ms.Pinning = ebpf.PinByName
			}
		}
		coll, err = ebpf.NewCollectionWithOptions(pinned, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: mapDir}})
		if err == nil {
			return coll, false, nil
		}
		if !errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, false, fmt.Errorf("load programs: %w", err)
		}
		reason = err.Error()
	}
	log.Warn("pinned maps are of another schema: migrating", "reason", reason, "schema_version", bpf.SchemaVersion)
	coll, err = ebpf.NewCollection(spec)
	if err != nil {
		return nil, false, fmt.Errorf("load programs: %w", err)
	}
	copyCompatible(spec, mapDir, coll, log)
	return coll, true, nil
}

// pinnedIncompatible says why the pins cannot be adopted, or "".
func pinnedIncompatible(spec *ebpf.CollectionSpec, mapDir string) string {
	metaPath := filepath.Join(mapDir, bpf.MeshMapMeta)
	anyPinned := false
	for name, ms := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(mapDir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Sprintf("map %s: %v", name, err)
		}
		anyPinned = true
		err = ms.Compatible(m)
		m.Close()
		if err != nil {
			return fmt.Sprintf("map %s: %v", name, err)
		}
	}
	if !anyPinned {
		return ""
	}
	meta, err := ebpf.LoadPinnedMap(metaPath, nil)
	if err != nil {
		return "no schema version pinned"
	}
	defer meta.Close()
	var v bpf.MeshMetaValue
	if err := meta.Lookup(uint32(0), &v); err != nil {
		return fmt.Sprintf("read schema version: %v", err)
	}
	if v.SchemaVersion != bpf.SchemaVersion {
		return fmt.Sprintf("schema version %d, want %d", v.SchemaVersion, bpf.SchemaVersion)
	}
	return ""
}

// copyCompatible copies old pinned maps that still match their spec into
// the new maps, so that live sockets keep their reverse NAT and original
// destination. SOCKHASH and per-CPU counters are not copied.
func copyCompatible(spec *ebpf.CollectionSpec, mapDir string, coll *ebpf.Collection, log *slog.Logger) {
	for name, ms := range spec.Maps {
		if strings.HasPrefix(name, ".") || name == bpf.MeshMapMeta {
			continue
		}
		switch ms.Type {
		case ebpf.SockHash, ebpf.SockMap, ebpf.PerCPUArray, ebpf.PerCPUHash, ebpf.LRUCPUHash:
			continue
		}
		old, err := ebpf.LoadPinnedMap(filepath.Join(mapDir, name), nil)
		if err != nil {
			continue
		}
		if ms.Compatible(old) != nil {
			old.Close()
			continue
		}
		n, err := copyMap(old, coll.Maps[name], ms)
		old.Close()
		if err != nil {
			log.Warn("migration: copy failed", "map", name, "copied", n, "err", err)
			continue
		}
		log.Info("migration: copied entries", "map", name, "entries", n)
	}
}

func copyMap(from, to *ebpf.Map, ms *ebpf.MapSpec) (int, error) {
	k := make([]byte, ms.KeySize)
	v := make([]byte, ms.ValueSize)
	n := 0
	it := from.Iterate()
	for it.Next(&k, &v) {
		if err := to.Update(k, v, ebpf.UpdateAny); err != nil {
			return n, err
		}
		n++
	}
	return n, it.Err()
}

// repinMaps replaces the old pins by the new maps (after the programs were
// swapped to use them).
func repinMaps(pinDir string, coll *ebpf.Collection) error {
	mapDir := filepath.Join(pinDir, "maps")
	entries, err := os.ReadDir(mapDir)
	if err != nil {
		return fmt.Errorf("repin: %w", err)
	}
	for _, e := range entries {
		if err := os.Remove(filepath.Join(mapDir, e.Name())); err != nil {
			return fmt.Errorf("repin: unpin old map %s: %w", e.Name(), err)
		}
	}
	for name, m := range coll.Maps {
		if strings.HasPrefix(name, ".") {
			continue
		}
		if err := m.Pin(filepath.Join(mapDir, name)); err != nil {
			return fmt.Errorf("repin map %s: %w", name, err)
		}
	}
	return nil
}

func writeMeta(m *ebpf.Map) error {
	v := bpf.MeshMetaValue{SchemaVersion: bpf.SchemaVersion}
	if err := m.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write schema version: %w", err)
	}
	return nil
}

// attachAll attaches every program, reusing pinned links with an atomic
// program swap. A pinned link is replaced instead when it belongs to
// another cgroup, or (sk_msg) when the SOCKHASH was replaced by a migration.
func attachAll(cfg Config, coll *ebpf.Collection, migrated bool, log *slog.Logger) ([]link.Link, error) {
	linkDir := filepath.Join(cfg.PinDir, "links")
	if err := os.MkdirAll(linkDir, 0o700); err != nil {
		return nil, fmt.Errorf("create link pin dir: %w", err)
	}
	cgID, err := CgroupID(cfg.CgroupPath)
	if err != nil {
		return nil, err
	}
	var links []link.Link
	for _, a := range bpf.Attachments {
		prog := coll.Programs[a.Program]
		path := filepath.Join(linkDir, a.Program)
		l, err := adoptLink(path, a, prog, cgID, migrated)
		if err != nil {
			log.Warn("pinned link not reusable: reattaching", "program", a.Program, "err", err)
		}
		if l == nil {
			l, err = attachOne(cfg, coll, a, prog)
			if err != nil {
				closeLinks(links)
				return nil, err
			}
			if err := l.Pin(path); err != nil {
				l.Close()
				closeLinks(links)
				return nil, fmt.Errorf("pin link %s: %w", a.Program, err)
			}
		}
		links = append(links, l)
	}
	return links, nil
}

// adoptLink loads a pinned link and swaps its program; it returns nil (and
// removes the pin, detaching the old program) when the link cannot be kept.
func adoptLink(path string, a bpf.Attachment, prog *ebpf.Program, cgID uint64, migrated bool) (link.Link, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	keep := true
	if a.Map != "" {
		keep = !migrated
	} else if info, err := l.Info(); err != nil || info.Cgroup() == nil || info.Cgroup().CgroupId != cgID {
		keep = false
	}
	if keep {
		if err = l.Update(prog); err == nil {
			return l, nil
		}
	}
	l.Unpin()
	l.Close()
	return nil, err
}

func attachOne(cfg Config, coll *ebpf.Collection, a bpf.Attachment, prog *ebpf.Program) (link.Link, error) {
	if a.Map != "" {
		l, err := link.AttachRawLink(link.RawLinkOptions{Target: coll.Maps[a.Map].FD(), Program: prog, Attach: a.Type})
		if err != nil {
			return nil, fmt.Errorf("attach %s to map %s: %w", a.Program, a.Map, err)
		}
		return l, nil
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cfg.CgroupPath, Attach: a.Type, Program: prog})
	if err != nil {
		return nil, fmt.Errorf("attach %s to %s: %w", a.Program, cfg.CgroupPath, err)
	}
	return l, nil
}
