package nodeagent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Kernel tests run their clients as children started inside the test
// cgroup: the test binary re-executes itself with childEnv set.
const childEnv = "NODEMESH_NATEST_DIAL"

func TestMain(m *testing.M) {
	if req := os.Getenv(childEnv); req != "" {
		os.Exit(childDial(req))
	}
	goleak.VerifyTestMain(m)
}

type dialReq struct {
	Addr string `json:"addr"`
	N    int    `json:"n"`
}

// dialResult counts replies (what the server wrote) and errors.
type dialResult struct {
	Replies map[string]int `json:"replies"`
	Errors  map[string]int `json:"errors"`
}

func childDial(raw string) int {
	var req dialReq
	if err := json.Unmarshal([]byte(raw), &req); err != nil {
		return 2
	}
	res := dialResult{Replies: map[string]int{}, Errors: map[string]int{}}
	for i := 0; i < req.N; i++ {
		c, err := net.DialTimeout("tcp4", req.Addr, time.Second)
		if err != nil {
			msg := err.Error()
			if strings.Contains(msg, "operation not permitted") {
				msg = "EPERM"
			}
			res.Errors[msg]++
			continue
		}
		c.SetDeadline(time.Now().Add(time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		res.Replies[string(b)]++
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// dialFrom runs n connects to addr from a child in cgroup.
func dialFrom(t testing.TB, cgroup, addr string, n int) dialResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, _ := json.Marshal(dialReq{Addr: addr, N: n})
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	inCgroup(t, cmd, cgroup)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dial child: %v", err)
	}
	var res dialResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("dial child output %q: %v", out, err)
	}
	return res
}

// nameServer answers every connection with its own address.
func nameServer(t testing.TB, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, ln.Addr().String())
			c.Close()
		}
	}()
	return ln.Addr().String()
}
