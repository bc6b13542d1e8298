package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// EchoConfig configures an in-pod echo server.
type EchoConfig struct {
	TCPPorts []int
	UDPPorts []int
	// OrigDst makes the server append the socket's SO_ORIGINAL_DST to its
	// greeting ("<name> <ip:port>"), as a node proxy's original_dst
	// listener filter reads it.
	OrigDst bool
	// Splice echoes with io.Copy(conn, conn), which Go implements with
	// splice(2): the kind of reader sk_msg acceleration starves.
	Splice bool
}

// EchoStats is what an echo server has seen since its start or last Reset.
type EchoStats struct {
	Name       string
	TCPAccepts int64
	UDPPackets int64
	Peers      map[string]int64 // remote IP -> accepts + packets
	OrigDsts   map[string]int64 // SO_ORIGINAL_DST answers (OrigDst mode)
	SendErrors map[string]int64 // failed UDP replies by error
}

// Echo is a running echo server. Every TCP connection is greeted with the
// server's name on one line, then everything it sends is echoed back; every
// UDP datagram is answered with the name on one line followed by the
// datagram. It counts accepts, which proves whether a connection reached it.
type Echo struct {
	Name string
	Proc *Proc
	ctl  *http.Client
}

// StartEcho starts an echo server named after the pod in the pod.
func (p *Pod) StartEcho(cfg EchoConfig) (*Echo, error) {
	return p.Node.c.startEcho(p.place(), p.Name, cfg)
}

// StartEcho starts an echo server named name in the node netns (host cgroup),
// e.g. as a stand-in for the node proxy.
func (n *Node) StartEcho(name string, cfg EchoConfig) (*Echo, error) {
	return n.c.startEcho(n.host(), name, cfg)
}

func (c *Cluster) startEcho(pl Place, name string, cfg EchoConfig) (*Echo, error) {
	sock := filepath.Join(c.RunDir, name+".sock")
	args := []string{"-name", name, "-ctl", sock, "-tcp", joinInts(cfg.TCPPorts), "-udp", joinInts(cfg.UDPPorts)}
	if cfg.OrigDst {
		args = append(args, "-origdst")
	}
	if cfg.Splice {
		args = append(args, "-splice")
	}
	env, argv, err := helperArgv("echo", args...)
	if err != nil {
		return nil, err
	}
	proc, err := c.start(pl, env, argv...)
	if err != nil {
		return nil, err
	}
	e := &Echo{Name: name, Proc: proc, ctl: &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := e.Stats()
		if err == nil {
			return e, nil
		}
		select {
		case <-proc.Done():
			return nil, fmt.Errorf("echo server %s exited: %v: %s", name, proc.Wait(), proc.Output())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("echo server %s not ready: %w", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stats returns the server's counters.
func (e *Echo) Stats() (EchoStats, error) {
	var st EchoStats
	resp, err := e.ctl.Get("http://echo/stats")
	if err != nil {
		return st, fmt.Errorf("echo %s stats: %w", e.Name, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("echo %s stats: %w", e.Name, err)
	}
	return st, nil
}

// Reset zeroes the server's counters.
func (e *Echo) Reset() error {
	resp, err := e.ctl.Post("http://echo/reset", "", nil)
	if err != nil {
		return fmt.Errorf("echo %s reset: %w", e.Name, err)
	}
	return resp.Body.Close()
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func splitInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("bad port %q: %w", f, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// echoServer is the in-pod side.
type echoServer struct {
	name    string
	origDst bool
	splice  bool
	mu      sync.Mutex
	st      EchoStats
}

func runEcho(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	name := fs.String("name", "", "name to greet with")
	ctl := fs.String("ctl", "", "unix socket for stats")
	tcp := fs.String("tcp", "", "TCP ports, comma separated")
	udp := fs.String("udp", "", "UDP ports, comma separated")
	origDst := fs.Bool("origdst", false, "report SO_ORIGINAL_DST in the greeting")
	splice := fs.Bool("splice", false, "echo with io.Copy (splice)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s := &echoServer{name: *name, origDst: *origDst, splice: *splice}
	s.resetLocked()
	tcpPorts, err := splitInts(*tcp)
	if err != nil {
		return err
	}
	udpPorts, err := splitInts(*udp)
	if err != nil {
		return err
	}
	errc := make(chan error, len(tcpPorts)+len(udpPorts)+1)
	for _, port := range tcpPorts {
		ln, err := net.Listen("tcp4", ":"+strconv.Itoa(port))
		if err != nil {
			return err
		}
		go func() { errc <- s.serveTCP(ln) }()
	}
	for _, port := range udpPorts {
		pc, err := net.ListenPacket("udp4", ":"+strconv.Itoa(port))
		if err != nil {
			return err
		}
		go func() { errc <- s.serveUDP(pc) }()
	}
	_ = os.Remove(*ctl)
	cl, err := net.Listen("unix", *ctl) // last: its presence means ready
	if err != nil {
		return err
	}
	go func() { errc <- http.Serve(cl, s.ctlHandler()) }()
	return <-errc
}

func (s *echoServer) resetLocked() {
	s.st = EchoStats{Name: s.name, Peers: map[string]int64{}, OrigDsts: map[string]int64{}, SendErrors: map[string]int64{}}
}

func (s *echoServer) ctlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		_ = json.NewEncoder(w).Encode(s.st)
	})
	mux.HandleFunc("POST /reset", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.resetLocked()
	})
	return mux
}

func (s *echoServer) serveTCP(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		greeting := s.name
		if s.origDst {
			greeting += " " + origDst(c.(*net.TCPConn))
		}
		s.mu.Lock()
		s.st.TCPAccepts++
		s.st.Peers[remoteIP(c.RemoteAddr())]++
		if s.origDst {
			s.st.OrigDsts[strings.Fields(greeting)[1]]++
		}
		s.mu.Unlock()
		if s.splice {
			go spliceConn(c.(*net.TCPConn), greeting)
		} else {
			go echoConn(c, greeting)
		}
	}
}

// echoConn greets and echoes with a plain read/write loop: io.Copy between
// TCP sockets would use splice(2), which sk_msg-redirected data never
// reaches.
func echoConn(c net.Conn, greeting string) {
	defer c.Close()
	if _, err := io.WriteString(c, greeting+"\n"); err != nil {
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// spliceConn greets, then echoes with io.Copy between the socket and
// itself, which Go does with splice(2).
func spliceConn(c *net.TCPConn, greeting string) {
	defer c.Close()
	if _, err := io.WriteString(c, greeting+"\n"); err != nil {
		return
	}
	_, _ = io.Copy(c, c)
}

func (s *echoServer) serveUDP(pc net.PacketConn) error {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.st.UDPPackets++
		s.st.Peers[remoteIP(from)]++
		s.mu.Unlock()
		reply := append([]byte(s.name+"\n"), buf[:n]...)
		if _, err := pc.WriteTo(reply, from); err != nil {
			s.mu.Lock()
			s.st.SendErrors[errText(err)]++
			s.mu.Unlock()
		}
	}
}

func remoteIP(a net.Addr) string {
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap().String()
	}
	return a.String()
}

// origDst reads SO_ORIGINAL_DST (struct sockaddr_in) from an accepted socket.
func origDst(c *net.TCPConn) string {
	raw, err := c.SyscallConn()
	if err != nil {
		return "error:" + err.Error()
	}
	var out string
	cerr := raw.Control(func(fd uintptr) {
		// The IPv6Mreq getter reads 20 bytes: enough for a sockaddr_in.
		m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if err != nil {
			out = "error:" + strings.ReplaceAll(err.Error(), " ", "_")
			return
		}
		b := m.Multiaddr
		port := int(b[2])<<8 | int(b[3])
		out = netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), uint16(port)).String()
	})
	if cerr != nil {
		return "error:" + cerr.Error()
	}
	return out
}

// readLine reads one '\n'-terminated line.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}
