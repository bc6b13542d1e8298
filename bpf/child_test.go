package bpf

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// runChild runs one child mode (see childReq) and returns the exit code.
func runChild(raw string) int {
	var req childReq
	if err := json.Unmarshal([]byte(raw), &req); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	if req.TimeoutMS == 0 {
		req.TimeoutMS = 2000
	}
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	res := childResult{Replies: map[string]int{}, Peers: map[string]int{}, Errors: map[string]int{}}
	var err error
	switch req.Mode {
	case "dial":
		for i := 0; i < req.N; i++ {
			dialOnce(req, timeout, &res)
		}
	case "udp-sendto":
		err = udpSendTo(req, timeout, &res)
	case "echo-client":
		echoClient(req, timeout, &res)
	case "http-get":
		httpGet(req, timeout, &res)
	case "serve-origdst", "serve-echo-copy", "serve-http", "serve-name":
		err = serve(req)
	case "serve-udp-name":
		err = serveUDP(req)
	default:
		err = fmt.Errorf("unknown mode %q", req.Mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

func dialer(req childReq, timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout}
	if req.Local != "" {
		ip := net.ParseIP(req.Local)
		if strings.HasPrefix(req.Net, "udp") {
			d.LocalAddr = &net.UDPAddr{IP: ip}
		} else {
			d.LocalAddr = &net.TCPAddr{IP: ip}
		}
	}
	return d
}

func errName(err error) string {
	switch {
	case err == nil:
		return ""
	case strings.Contains(err.Error(), "operation not permitted"):
		return "EPERM"
	case strings.Contains(err.Error(), "timeout"):
		return "timeout"
	case strings.Contains(err.Error(), "connection refused"):
		return "refused"
	}
	return err.Error()
}

// dialOnce connects, records getpeername and the server's reply.
func dialOnce(req childReq, timeout time.Duration, res *childResult) {
	c, err := dialer(req, timeout).Dial(req.Net, req.Addr)
	if err != nil {
		res.Errors[errName(err)]++
		return
	}
	defer c.Close()
	res.Peers[peerName(c)]++
	c.SetDeadline(time.Now().Add(timeout))
	if strings.HasPrefix(req.Net, "udp") {
		c.Write([]byte("hi"))
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil && err != io.EOF {
		res.Errors[errName(err)]++
		return
	}
	res.Replies[string(buf[:n])]++
}

// peerName asks the kernel (getpeername) who the peer is.
func peerName(c net.Conn) string {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return "?"
	}
	raw, _ := sc.SyscallConn()
	var sa syscall.Sockaddr
	var err error
	raw.Control(func(fd uintptr) { sa, err = syscall.Getpeername(int(fd)) })
	if err != nil {
		return "err:" + err.Error()
	}
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *syscall.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return "?"
}

// udpSendTo sends N datagrams from one unconnected socket (sendmsg4) and
// records the source address recvmsg reports for each answer.
func udpSendTo(req childReq, timeout time.Duration, res *childResult) error {
	local := ":0"
	if req.Local != "" {
		local = net.JoinHostPort(req.Local, "0")
	}
	pc, err := net.ListenPacket(req.Net, local)
	if err != nil {
		return err
	}
	defer pc.Close()
	dst, err := net.ResolveUDPAddr(req.Net, req.Addr)
	if err != nil {
		return err
	}
	buf := make([]byte, 256)
	for i := 0; i < req.N; i++ {
		if _, err := pc.WriteTo([]byte("hi"), dst); err != nil {
			res.Errors[errName(err)]++
			continue
		}
		pc.SetReadDeadline(time.Now().Add(timeout))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			res.Errors[errName(err)]++
			continue
		}
		res.Peers[from.String()]++
		res.Replies[string(buf[:n])]++
	}
	return nil
}

// echoClient writes a line and waits (bounded) for the echo.
func echoClient(req childReq, timeout time.Duration, res *childResult) {
	c, err := dialer(req, timeout).Dial(req.Net, req.Addr)
	if err != nil {
		res.Errors[errName(err)]++
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		res.Errors[errName(err)]++
		return
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		res.Errors[errName(err)]++
		return
	}
	res.Replies[strings.TrimSpace(line)]++
}

func httpGet(req childReq, timeout time.Duration, res *childResult) {
	tr := &http.Transport{DialContext: dialer(req, timeout).DialContext}
	cl := &http.Client{Transport: tr, Timeout: timeout}
	for i := 0; i < max(req.N, 1); i++ {
		resp, err := cl.Get("http://" + req.Addr + "/")
		if err != nil {
			res.Errors[errName(err)]++
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res.Replies[string(b)]++
	}
}

// serve runs a server until killed; it prints "ready" once listening.
func serve(req childReq) error {
	ln, err := net.Listen(req.Net, req.Addr)
	if err != nil {
		return err
	}
	if req.Mode == "serve-http" {
		fmt.Println("ready")
		return http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "ok")
		}))
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			switch req.Mode {
			case "serve-origdst":
				fmt.Fprintf(c, "orig=%s via=%s", originalDst(c), ln.Addr())
			case "serve-echo-copy":
				// io.Copy between TCP conns uses splice(2).
				io.Copy(c.(*net.TCPConn), c.(*net.TCPConn))
			case "serve-name":
				fmt.Fprint(c, ln.Addr().String())
			}
		}()
	}
}

// serveUDP answers every datagram with the server's address.
func serveUDP(req childReq) error {
	pc, err := net.ListenPacket(req.Net, req.Addr)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	buf := make([]byte, 1500)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		pc.WriteTo([]byte(pc.LocalAddr().String()), from)
	}
}

// originalDst asks getsockopt(SOL_IP, SO_ORIGINAL_DST) as Envoy does.
func originalDst(c net.Conn) string {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return "err:" + err.Error()
	}
	var sa [16]byte
	size := uint32(len(sa))
	var errno syscall.Errno
	raw.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_IP, 80,
			uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&size)), 0)
	})
	if errno != 0 {
		return "err:" + errno.Error()
	}
	port := binary.BigEndian.Uint16(sa[2:4])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), port).String()
}
