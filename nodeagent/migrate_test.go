package nodeagent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/nodemesh/nodemesh/bpf"
)

// TestMigrateIncompatibleSchema pins maps as an older agent would have
// (a services map with another value layout, schema version 1) and checks
// that Open replaces them, copies the maps that still fit, and works.
func TestMigrateIncompatibleSchema(t *testing.T) {
	env := newKernelEnv(t)
	mapDir := filepath.Join(env.PinDir, "maps")
	if err := os.MkdirAll(mapDir, 0o700); err != nil {
		t.Fatal(err)
	}
	pin := func(name string, spec *ebpf.MapSpec) *ebpf.Map {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Pin(filepath.Join(mapDir, name)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	old := pin(bpf.MeshMapServices, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 24, ValueSize: 12, MaxEntries: 1024})
	if err := old.Put(make([]byte, 24), make([]byte, 12)); err != nil {
		t.Fatal(err)
	}
	meta := pin(bpf.MeshMapMeta, &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err := meta.Put(uint32(0), bpf.MeshMetaValue{SchemaVersion: 1}); err != nil {
		t.Fatal(err)
	}
	spec, err := bpf.LoadMesh()
	if err != nil {
		t.Fatal(err)
	}
	rev := pin(bpf.MeshMapRevNat, spec.Maps[bpf.MeshMapRevNat].Copy())
	rk := bpf.MeshRevKey{Cookie: 77}
	rv := bpf.MeshRevValue{Ip: bpf.Addr(netip.MustParseAddr("10.96.0.1")), Port: bpf.NetPort(80)}
	if err := rev.Put(&rk, &rv); err != nil {
		t.Fatal(err)
	}

	dp, err := Open(Config{Node: "migrate", CgroupPath: env.Cgroup, PinDir: env.PinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Uninstall()

	pinned, err := ebpf.LoadPinnedMap(filepath.Join(mapDir, bpf.MeshMapServices), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if err := spec.Maps[bpf.MeshMapServices].Compatible(pinned); err != nil {
		t.Errorf("services pin after migration: %v", err)
	}
	if err := checkVersion(mapDir); err != nil {
		t.Error(err)
	}
	var got bpf.MeshRevValue
	if err := dp.Map(bpf.MeshMapRevNat).Lookup(&rk, &got); err != nil || got != rv {
		t.Errorf("rev_nat entry not carried over: %v %+v", err, got)
	}
	b := netip.MustParseAddrPort(nameServer(t, "127.0.0.71:0"))
	st := State{Services: []Service{{VIP: netip.MustParseAddr("10.96.2.1"), Port: 80, Proto: TCP,
		Backends: []Backend{{IP: b.Addr(), Port: b.Port()}}}}}
	if _, err := dp.Apply(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if res := dialFrom(t, env.Cgroup, "10.96.2.1:80", 5); res.Replies[b.String()] != 5 {
		t.Errorf("traffic after migration: %v %v", res.Replies, res.Errors)
	}
}

// TestMigrateVersionOnly: same layouts, older version number: the maps are
// recreated and their entries copied, so the service keeps working through
// the migration without an Apply; cgroup links are kept and swapped.
func TestMigrateVersionOnly(t *testing.T) {
	env := newKernelEnv(t)
	cfg := Config{Node: "migrate2", CgroupPath: env.Cgroup, PinDir: env.PinDir}
	dp, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := netip.MustParseAddrPort(nameServer(t, "127.0.0.72:0"))
	st := State{Services: []Service{{VIP: netip.MustParseAddr("10.96.2.2"), Port: 80, Proto: TCP,
		Backends: []Backend{{IP: b.Addr(), Port: b.Port()}}}}}
	if _, err := dp.Apply(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	before := linkIDs(t, dp)
	if err := dp.Map(bpf.MeshMapMeta).Put(uint32(0), bpf.MeshMetaValue{SchemaVersion: 1}); err != nil {
		t.Fatal(err)
	}
	oldID, _ := mapID(dp.Map(bpf.MeshMapServices))
	dp.Close()

	dp2, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Uninstall()
	newID, _ := mapID(dp2.Map(bpf.MeshMapServices))
	if newID == oldID {
		t.Errorf("services map not recreated (id %d)", newID)
	}
	after := linkIDs(t, dp2)
	if after["connect4"].link != before["connect4"].link {
		t.Errorf("connect4 link not adopted")
	}
	if after["sk_msg_redirect"].link == before["sk_msg_redirect"].link {
		t.Errorf("sk_msg link still on the old SOCKHASH")
	}
	if err := checkVersion(filepath.Join(env.PinDir, "maps")); err != nil {
		t.Error(err)
	}
	if res := dialFrom(t, env.Cgroup, "10.96.2.2:80", 5); res.Replies[b.String()] != 5 {
		t.Errorf("traffic after migration, before any apply: %v %v", res.Replies, res.Errors)
	}
	got, err := dp2.Dump()
	if err != nil || len(got.Services) != 1 {
		t.Errorf("dump after migration: %+v %v", got, err)
	}
}

func checkVersion(mapDir string) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(mapDir, bpf.MeshMapMeta), nil)
	if err != nil {
		return err
	}
	defer m.Close()
	var v bpf.MeshMetaValue
	if err := m.Lookup(uint32(0), &v); err != nil {
		return err
	}
	if v.SchemaVersion != bpf.SchemaVersion {
		return fmt.Errorf("pinned schema version %d, want %d", v.SchemaVersion, bpf.SchemaVersion)
	}
	return nil
}

func mapID(m *ebpf.Map) (ebpf.MapID, error) {
	info, err := m.Info()
	if err != nil {
		return 0, err
	}
	id, _ := info.ID()
	return id, nil
}
