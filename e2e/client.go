package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ClientConfig describes a burst of connections an in-pod client makes.
type ClientConfig struct {
	Addr        string        // "ip:port", e.g. a service VIP
	Proto       string        // "tcp" (default) or "udp"
	Count       int           // connections (TCP) or exchanges (UDP); default 1
	Concurrency int           // parallel workers; default 8
	Duration    time.Duration // spread the starts evenly over this long; 0: as fast as possible
	Timeout     time.Duration // per connection; default 5s
	// Unconnected sends UDP with sendto/recvfrom on an unconnected socket
	// (the sendmsg/recvmsg hooks) instead of connect/send/recv.
	Unconnected bool
	// DialOnly makes a TCP client connect and close without the greeting
	// and echo exchange (for servers that do not speak it).
	DialOnly bool
	// Payload adds this many bytes to each TCP exchange's echoed line.
	Payload int
}

// ClientResult is what the client saw.
type ClientResult struct {
	Attempts int
	OK       int
	Failed   int
	Backends map[string]int // greeting line (server name) -> count
	Peers    map[string]int // getpeername (TCP, connected UDP) or recvfrom source (unconnected UDP) -> count
	Errors   map[string]int // error text -> count
	Elapsed  time.Duration
}

// Connect runs a client in the pod until it has made cfg.Count connections
// and returns what it saw. The error is about running the client, not about
// failed connections: those are counted in the result.
func (p *Pod) Connect(ctx context.Context, cfg ClientConfig) (ClientResult, error) {
	return connect(ctx, p.place(), p.Name, cfg)
}

// ConnectUnmeshed is Connect from the pod's netns but from a cgroup outside
// every node subtree, so that no socket-level hook sees the client: only
// packet-level programs on the path (e.g. the server node's ingress policy)
// act on its traffic.
func (p *Pod) ConnectUnmeshed(ctx context.Context, cfg ClientConfig) (ClientResult, error) {
	return connect(ctx, p.unmeshed(), p.Name, cfg)
}

func connect(ctx context.Context, pl Place, name string, cfg ClientConfig) (ClientResult, error) {
	var res ClientResult
	env, argv, err := helperArgv("client",
		"-addr", cfg.Addr, "-proto", cfg.Proto, "-n", strconv.Itoa(cfg.Count),
		"-c", strconv.Itoa(cfg.Concurrency), "-duration", cfg.Duration.String(),
		"-timeout", cfg.Timeout.String(), "-unconnected="+strconv.FormatBool(cfg.Unconnected),
		"-dial-only="+strconv.FormatBool(cfg.DialOnly), "-payload", strconv.Itoa(cfg.Payload))
	if err != nil {
		return res, err
	}
	out, err := pl.run(ctx, env, argv...)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("client in %s: decode result %q: %w", name, out, err)
	}
	return res, nil
}

func runClient(args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	var cfg ClientConfig
	fs.StringVar(&cfg.Addr, "addr", "", "ip:port")
	fs.StringVar(&cfg.Proto, "proto", "tcp", "tcp or udp")
	fs.IntVar(&cfg.Count, "n", 1, "connections")
	fs.IntVar(&cfg.Concurrency, "c", 8, "workers")
	fs.DurationVar(&cfg.Duration, "duration", 0, "spread over")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Second, "per connection")
	fs.BoolVar(&cfg.Unconnected, "unconnected", false, "UDP with sendto/recvfrom")
	fs.BoolVar(&cfg.DialOnly, "dial-only", false, "TCP connect and close")
	fs.IntVar(&cfg.Payload, "payload", 0, "extra bytes per TCP exchange")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.Count <= 0 {
		cfg.Count = 1
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	res := clientRun(cfg)
	return json.NewEncoder(os.Stdout).Encode(res)
}

// clientRun makes the connections, paced when cfg.Duration is set.
func clientRun(cfg ClientConfig) ClientResult {
	res := ClientResult{Backends: map[string]int{}, Peers: map[string]int{}, Errors: map[string]int{}}
	var mu sync.Mutex
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				backend, peer, err := exchange(cfg, i)
				mu.Lock()
				res.Attempts++
				if err != nil {
					res.Failed++
					res.Errors[errText(err)]++
				} else {
					res.OK++
					res.Backends[backend]++
					res.Peers[peer]++
				}
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for i := 0; i < cfg.Count; i++ {
		if cfg.Duration > 0 {
			at := start.Add(time.Duration(int64(cfg.Duration) * int64(i) / int64(cfg.Count)))
			time.Sleep(time.Until(at))
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res
}

// errText keeps the syscall part of an error so that counts group well.
func errText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return err.Error()
}

func exchange(cfg ClientConfig, i int) (backend, peer string, err error) {
	payload := fmt.Sprintf("ping-%d", i)
	if cfg.Payload > 0 && cfg.Proto != "udp" {
		payload += "-" + strings.Repeat("x", cfg.Payload)
	}
	switch {
	case cfg.Proto == "udp" && cfg.Unconnected:
		return udpUnconnected(cfg, payload)
	case cfg.Proto == "udp":
		return udpConnected(cfg, payload)
	default:
		return tcpExchange(cfg, payload)
	}
}

func tcpExchange(cfg ClientConfig, payload string) (string, string, error) {
	c, err := net.DialTimeout("tcp4", cfg.Addr, cfg.Timeout)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(cfg.Timeout))
	peer, err := getpeername(c.(*net.TCPConn))
	if err != nil || cfg.DialOnly {
		return "", peer, err
	}
	r := bufio.NewReader(c)
	greeting, err := readLine(r)
	if err != nil {
		return "", "", fmt.Errorf("read greeting: %w", err)
	}
	if _, err := fmt.Fprintf(c, "%s\n", payload); err != nil {
		return "", "", err
	}
	echo, err := readLine(r)
	if err != nil {
		return "", "", fmt.Errorf("read echo: %w", err)
	}
	if echo != payload {
		return "", "", fmt.Errorf("echo %q, want %q", echo, payload)
	}
	return greeting, peer, nil
}

func udpConnected(cfg ClientConfig, payload string) (string, string, error) {
	c, err := net.DialTimeout("udp4", cfg.Addr, cfg.Timeout)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(cfg.Timeout))
	peer, err := getpeername(c.(*net.UDPConn))
	if err != nil {
		return "", "", err
	}
	if _, err := c.Write([]byte(payload)); err != nil {
		return "", "", err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return "", "", err
	}
	name, err := checkUDPReply(buf[:n], payload)
	return name, peer, err
}

func udpUnconnected(cfg ClientConfig, payload string) (string, string, error) {
	to, err := net.ResolveUDPAddr("udp4", cfg.Addr)
	if err != nil {
		return "", "", err
	}
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(cfg.Timeout))
	if _, err := c.WriteToUDP([]byte(payload), to); err != nil {
		return "", "", err
	}
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDP(buf)
	if err != nil {
		return "", "", err
	}
	name, err := checkUDPReply(buf[:n], payload)
	return name, from.AddrPort().String(), err
}

func checkUDPReply(b []byte, payload string) (string, error) {
	name, rest, ok := strings.Cut(string(b), "\n")
	if !ok || rest != payload {
		return "", fmt.Errorf("udp reply %q, want <name>\\n%s", b, payload)
	}
	return name, nil
}

// getpeername asks the kernel (not Go's cached address) for the peer.
func getpeername(c syscall.Conn) (string, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	var peer string
	var perr error
	if err := raw.Control(func(fd uintptr) {
		sa, err := unix.Getpeername(int(fd))
		if err != nil {
			perr = fmt.Errorf("getpeername: %w", err)
			return
		}
		if in4, ok := sa.(*unix.SockaddrInet4); ok {
			peer = netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)).String()
		}
	}); err != nil {
		return "", err
	}
	return peer, perr
}
