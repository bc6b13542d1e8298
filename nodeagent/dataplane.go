package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/nodemesh/nodemesh/bpf"
)

// DefaultPinRoot is where pins go when Config.PinDir is empty:
// DefaultPinRoot/<node>.
const DefaultPinRoot = "/sys/fs/bpf/nodemesh"

// Config configures a Dataplane.
type Config struct {
	// Node names the node; it picks the default pin directory.
	Node string
	// CgroupPath is the cgroup v2 directory the programs attach to (the
	// node's, holding every pod's cgroup). Required: there is no default,
	// so nothing ever attaches to the root cgroup by accident.
	CgroupPath string
	// PinDir holds the pinned maps (PinDir/maps) and links (PinDir/links).
	// Default DefaultPinRoot/<Node>.
	PinDir string
	// Logger; default discards.
	Logger *slog.Logger
}

// Validate checks the config and fills defaults.
func (c *Config) Validate() error {
	if c.Node == "" {
		return errors.New("nodeagent config: node: empty")
	}
	if c.CgroupPath == "" {
		return errors.New("nodeagent config: cgroupPath: empty (refusing to guess; never the root cgroup)")
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(c.CgroupPath, &fs); err != nil {
		return fmt.Errorf("nodeagent config: cgroupPath %s: %w", c.CgroupPath, err)
	}
	if fs.Type != cgroup2Magic {
		return fmt.Errorf("nodeagent config: cgroupPath %s: not a cgroup v2 directory", c.CgroupPath)
	}
	if c.PinDir == "" {
		c.PinDir = filepath.Join(DefaultPinRoot, c.Node)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

const cgroup2Magic = 0x63677270

// Dataplane owns the node's eBPF programs and maps. Maps and links are
// pinned: Close leaves them (traffic keeps flowing while the agent is away);
// Uninstall removes them.
type Dataplane struct {
	cfg   Config
	log   *slog.Logger
	mu    sync.Mutex
	coll  *ebpf.Collection
	links []link.Link
	maps  Maps
	rec   *Reconciler
}

// Open loads the programs, adopts the pinned maps (or creates and pins
// them), migrates maps of another schema version, and attaches every
// program to Config.CgroupPath, swapping programs atomically (link.Update)
// where links are pinned already.
func Open(cfg Config) (*Dataplane, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("node", cfg.Node)
	coll, migrated, err := loadCollection(cfg.PinDir, log)
	if err != nil {
		return nil, err
	}
	links, err := attachAll(cfg, coll, migrated, log)
	if err != nil {
		coll.Close()
		return nil, err
	}
	if migrated {
		if err := repinMaps(cfg.PinDir, coll); err != nil {
			closeLinks(links)
			coll.Close()
			return nil, err
		}
		log.Info("maps migrated", "schema_version", bpf.SchemaVersion)
	}
	if err := writeMeta(coll.Maps[bpf.MeshMapMeta]); err != nil {
		closeLinks(links)
		coll.Close()
		return nil, err
	}
	log.Info("dataplane loaded", "cgroup", cfg.CgroupPath, "pin_dir", cfg.PinDir, "migrated", migrated)
	maps := KernelMaps(coll.Maps)
	return &Dataplane{cfg: cfg, log: log, coll: coll, links: links, maps: maps, rec: NewReconciler(maps, CgroupID)}, nil
}

// Apply makes the maps hold s and writes only what differs, in an order
// that never exposes a half-written service (see applyState). The first
// Apply after Open reads every map; later ones re-read and rewrite only the
// services that changed since the last successful Apply (see Reconciler).
func (d *Dataplane) Apply(ctx context.Context, s State) (Stats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	start := time.Now()
	st, err := d.rec.apply(ctx, &s)
	for _, w := range st.Warnings {
		d.log.Warn("apply", "warning", w)
	}
	if err != nil {
		d.log.Error("apply failed", "puts", st.Puts, "deletes", st.Deletes, "err", err)
		return st, err
	}
	d.log.Info("applied", "puts", st.Puts, "deletes", st.Deletes, "services", st.Services,
		"backends", st.Backends, "duration", time.Since(start))
	return st, nil
}

// Dump reads the maps back into a State (sorted as State.Canonical).
func (d *Dataplane) Dump() (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return dumpState(d.maps)
}

// Maps returns the tables Apply writes (for inspection in tests).
func (d *Dataplane) Maps() Maps { return d.maps }

// Map returns a loaded map by its bpf.MeshMap* name.
func (d *Dataplane) Map(name string) *ebpf.Map { return d.coll.Maps[name] }

// Program returns a loaded program by its bpf.MeshProg* name.
func (d *Dataplane) Program(name string) *ebpf.Program { return d.coll.Programs[name] }

// Close releases this process's handles; pinned maps and links stay and
// keep the programs attached.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	closeLinks(d.links)
	d.links = nil
	if d.coll != nil {
		d.coll.Close()
		d.coll = nil
	}
	return nil
}

// Uninstall detaches every program and removes the pins, then closes.
func (d *Dataplane) Uninstall() error {
	d.mu.Lock()
	var errs []error
	for _, l := range d.links {
		if err := l.Unpin(); err != nil {
			errs = append(errs, err)
		}
	}
	d.mu.Unlock()
	d.Close()
	if err := os.RemoveAll(d.cfg.PinDir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("uninstall: %w", errors.Join(errs...))
	}
	d.log.Info("dataplane uninstalled")
	return nil
}

func closeLinks(links []link.Link) {
	for _, l := range links {
		l.Close()
	}
}

// CgroupID returns the id of a cgroup v2 directory (its inode number, what
// bpf_get_current_cgroup_id returns).
func CgroupID(path string) (uint64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.IsDir() {
		return 0, fmt.Errorf("cgroup %s: not a directory", path)
	}
	return st.Ino, nil
}

// ApplyToMaps is Apply on any Maps (a fake, in tests of callers).
// It always does a full reconcile.
func ApplyToMaps(ctx context.Context, m Maps, s State, resolve CgroupResolver) (Stats, error) {
	st, _, err := applyState(ctx, m, &s, resolve)
	return st, err
}

// DumpMaps is Dump on any Maps.
func DumpMaps(m Maps) (State, error) { return dumpState(m) }

// CgroupV2Mount returns where the cgroup v2 hierarchy is mounted.
func CgroupV2Mount() (string, error) {
	data, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "", fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", errors.New("find cgroup v2 mount: none in /proc/mounts")
}
