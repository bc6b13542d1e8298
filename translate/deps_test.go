package translate

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The translator is pure: it must not reach gRPC, eBPF, the network, the
// file system or the clock, and it does not log. This test fails the build
// when any of its packages does (in the spirit of tailscale's
// tstest/deptest).

var pureDirs = []string{".", "authz", "dataplane", "inboundauthz", "secure", "../internal/meshgen"}

// notImported lists imports forbidden to one package beyond the rules for
// all: authz is imported by the translator's passes, never the other way.
var notImported = map[string][]string{
	"authz": {"github.com/nodemesh/nodemesh/translate"},
}

var (
	forbiddenDeps    = []string{"google.golang.org/grpc", "github.com/cilium/ebpf"}
	forbiddenImports = []string{"net", "os", "os/exec", "syscall", "unsafe", "log", "log/slog"}
	forbiddenCalls   = []string{"Now", "Since", "Until", "Sleep", "After", "Tick", "NewTimer", "NewTicker", "AfterFunc"}
)

type listedPackage struct {
	ImportPath string
	Dir        string
	Imports    []string
	Deps       []string
	GoFiles    []string
}

func goList(t *testing.T, dir string) listedPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", ".")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list in %s: %v\n%s", dir, err, ee.Stderr)
		}
		t.Fatalf("go list in %s: %v", dir, err)
	}
	var p listedPackage
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatalf("decode go list output: %v", err)
	}
	return p
}

// transitiveDeps runs go list -deps -json and returns every package path.
func transitiveDeps(t *testing.T, dir string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json", ".")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps in %s: %v", dir, err)
	}
	var paths []string
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode go list -deps output: %v", err)
		}
		paths = append(paths, p.ImportPath)
	}
	return paths
}

func TestPureDependencies(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("go command not on PATH: %v", err)
	}
	for _, dir := range pureDirs {
		t.Run(dir, func(t *testing.T) {
			p := goList(t, dir)
			deps := transitiveDeps(t, dir)
			if len(deps) < 10 {
				t.Fatalf("go list -deps returned only %d packages; the check would be meaningless", len(deps))
			}
			for _, d := range deps {
				for _, bad := range forbiddenDeps {
					if d == bad || strings.HasPrefix(d, bad+"/") {
						t.Errorf("%s depends (transitively) on %s", p.ImportPath, d)
					}
				}
			}
			for _, imp := range p.Imports {
				for _, bad := range append(forbiddenImports, notImported[dir]...) {
					if imp == bad {
						t.Errorf("%s imports %q", p.ImportPath, imp)
					}
				}
			}
			checkNoClock(t, p)
		})
	}
}

// checkNoClock parses the package's sources and fails on calls to the
// wall clock or timers through the time package, whatever it is named.
func checkNoClock(t *testing.T, p listedPackage) {
	t.Helper()
	if len(p.GoFiles) == 0 {
		t.Fatalf("%s has no Go files", p.ImportPath)
	}
	fset := token.NewFileSet()
	for _, name := range p.GoFiles {
		f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		timeName := ""
		for _, imp := range f.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); path == "time" {
				timeName = "time"
				if imp.Name != nil {
					timeName = imp.Name.Name
				}
			}
		}
		if timeName == "" {
			continue
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); ok && id.Name == timeName {
				for _, bad := range forbiddenCalls {
					if sel.Sel.Name == bad {
						t.Errorf("%s: uses time.%s; the translator must not read the clock", fset.Position(sel.Pos()), bad)
					}
				}
			}
			return true
		})
	}
}
