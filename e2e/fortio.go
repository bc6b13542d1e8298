package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"time"
)

// FortioVersion is the fortio (Istio's load generator) the benchmarks use;
// newer versions pull a dependency the module proxy here refuses.
const FortioVersion = "v1.66.0"

// ToolCacheDir is where built load tools are kept, outside the repository:
// ${XDG_CACHE_HOME:-$HOME/.cache}/nodemesh/bin.
func ToolCacheDir() (string, error) {
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("find cache dir: %w", err)
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "nodemesh", "bin"), nil
}

// FortioBinary returns the path of fortio FortioVersion, building it through
// a wrapper module into ToolCacheDir when it is not there yet.
func FortioBinary(ctx context.Context) (string, error) {
	dir, err := ToolCacheDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "fortio-"+FortioVersion)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	mod := filepath.Join(filepath.Dir(dir), "fortio-"+FortioVersion)
	if err := os.MkdirAll(mod, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", mod, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	steps := [][]string{
		{"mod", "init", "fortiowrap"},
		{"get", "-tool", "fortio.org/fortio@" + FortioVersion},
		{"build", "-o", bin, "fortio.org/fortio"},
	}
	if _, err := os.Stat(filepath.Join(mod, "go.mod")); err == nil {
		steps = steps[1:]
	}
	for _, args := range steps {
		cmd := exec.CommandContext(ctx, goTool, args...)
		cmd.Dir = mod
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build fortio: go %v: %w: %s", args, err, out)
		}
	}
	return bin, nil
}

// FortioResult is the part of fortio's JSON result the benchmarks read.
type FortioResult struct {
	RequestedQPS      string
	ActualQPS         float64
	RetCodes          map[string]int64
	DurationHistogram struct {
		Count       int64
		Avg         float64 // seconds
		Max         float64 // seconds
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
	vethBytes uint64 // set by the benchmark, not fortio
}

// Percentile returns the latency at percentile p (e.g. 99) in seconds.
func (r FortioResult) Percentile(p float64) (float64, error) {
	for _, q := range r.DurationHistogram.Percentiles {
		if q.Percentile == p {
			return q.Value, nil
		}
	}
	return 0, fmt.Errorf("fortio result has no p%v", p)
}

// FortioLoad runs `fortio load` in pod p against url at a fixed rate over
// fixed (keep-alive) connections and returns the parsed result. Histogram
// buckets are 10µs wide (fortio's default of 1ms would blur sub-millisecond
// percentiles).
func (p *Pod) FortioLoad(ctx context.Context, fortio, url string, qps float64, conns int, d time.Duration) (FortioResult, error) {
	var res FortioResult
	out, err := p.Run(ctx, fortio, "load", "-qps", strconv.FormatFloat(qps, 'f', -1, 64),
		"-c", strconv.Itoa(conns), "-t", d.String(), "-uniform", "-p", "50,90,99", "-r", "0.00001",
		"-logger-json=false", "-json", "-", url)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("decode fortio result: %w", err)
	}
	if res.RetCodes["200"] != res.DurationHistogram.Count || res.DurationHistogram.Count == 0 {
		return res, fmt.Errorf("fortio %s: %d requests, return codes %v", url, res.DurationHistogram.Count, res.RetCodes)
	}
	return res, nil
}

// StartFortioServer starts `fortio server` in the pod with only its HTTP
// echo port open, and waits until it answers.
func (p *Pod) StartFortioServer(ctx context.Context, fortio string, port int) (*Proc, error) {
	proc, err := p.Start(fortio, "server", "-http-port", strconv.Itoa(port),
		"-grpc-port", "disabled", "-redirect-port", "disabled", "-logger-json=false")
	if err != nil {
		return nil, err
	}
	return proc, waitTCP(ctx, p, fmt.Sprintf("%s:%d", p.IP, port), proc)
}

// waitTCP waits until a TCP connection from pod p to addr succeeds.
func waitTCP(ctx context.Context, p *Pod, addr string, proc *Proc) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := p.Connect(ctx, ClientConfig{Addr: addr, Count: 1, Timeout: time.Second, DialOnly: true})
		if err == nil && res.OK == 1 {
			return nil
		}
		select {
		case <-proc.Done():
			return fmt.Errorf("%v exited: %v: %s", proc.Cmd.Args, proc.Wait(), tail(proc.Output(), 2000))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting connections: %+v %v", addr, res, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
