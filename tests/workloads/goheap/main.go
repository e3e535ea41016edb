// A Go service whose sessions never end, beside a function that churns through buffers
// (memlens integration tests):
//
//	goheap <sessions> <KiB per session> [<sessions per second> [<path bits>]]
//
// openSession starts a goroutine that allocates its session buffer in serveSession and then
// waits forever for a message that never comes: the buffers stay reachable, the leak. All the
// while churn allocates 256 KiB buffers and drops them, so the garbage collector runs and the
// heap's freed memory is reused. The process serves its own heap profile (net/http/pprof) on
// loopback and prints "ready <port> leaked <bytes>" once every session is open; it exits on
// "exit" (or the end of its input). With <path bits> k, sessions reach serveSession through 2^k
// distinct call paths (route, left and right), so the heap profile has as many stacks (for
// `cargo xtask bench go-profile`, which also sets GOHEAP_MEMPROFILERATE=1 to sample every
// allocation: Go 1.19 applies GODEBUG=memprofilerate before its own default overwrites it).
// Built with Debian's golang-go, default flags.
package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"runtime"
	"strconv"
	"time"
)

var sink []byte

//go:noinline
func serveSession(size int, opened chan<- struct{}, never <-chan struct{}) {
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = byte(i)
	}
	opened <- struct{}{}
	<-never
	runtime.KeepAlive(buf)
}

//go:noinline
func route(path, depth, size int, opened chan<- struct{}, never <-chan struct{}) {
	if depth == 0 {
		serveSession(size, opened, never)
	} else if path&1 == 0 {
		left(path>>1, depth-1, size, opened, never)
	} else {
		right(path>>1, depth-1, size, opened, never)
	}
}

//go:noinline
func left(path, depth, size int, opened chan<- struct{}, never <-chan struct{}) {
	route(path, depth, size, opened, never)
}

//go:noinline
func right(path, depth, size int, opened chan<- struct{}, never <-chan struct{}) {
	route(path, depth, size, opened, never)
}

//go:noinline
func openSession(path, bits, size int, opened chan<- struct{}, never <-chan struct{}) {
	go route(path, bits, size, opened, never)
}

//go:noinline
func churn() {
	for {
		b := make([]byte, 256<<10)
		for i := 0; i < len(b); i += 512 {
			b[i] = byte(i)
		}
		sink = b
		time.Sleep(time.Millisecond)
	}
}

func main() {
	if rate, err := strconv.Atoi(os.Getenv("GOHEAP_MEMPROFILERATE")); err == nil && rate > 0 {
		runtime.MemProfileRate = rate
	}
	usage := "usage: goheap <sessions> <KiB per session> [<sessions per second> [<path bits>]]"
	if len(os.Args) < 3 || len(os.Args) > 5 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	sessions, err1 := strconv.Atoi(os.Args[1])
	kib, err2 := strconv.Atoi(os.Args[2])
	pause := time.Millisecond
	if len(os.Args) >= 4 {
		rate, err := strconv.Atoi(os.Args[3])
		if err != nil || rate <= 0 {
			fmt.Fprintln(os.Stderr, usage)
			os.Exit(2)
		}
		pause = time.Second / time.Duration(rate)
	}
	bits := 0
	if len(os.Args) == 5 {
		b, err := strconv.Atoi(os.Args[4])
		if err != nil || b < 0 || b > 14 {
			fmt.Fprintln(os.Stderr, usage)
			os.Exit(2)
		}
		bits = b
	}
	if err1 != nil || err2 != nil || sessions <= 0 || kib <= 0 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go http.Serve(listener, nil)
	go churn()
	opened := make(chan struct{})
	never := make(chan struct{})
	for i := 0; i < sessions; i++ {
		openSession(i%(1<<bits), bits, kib<<10, opened, never)
		<-opened
		time.Sleep(pause)
	}
	fmt.Printf("ready %d leaked %d\n", listener.Addr().(*net.TCPAddr).Port, sessions*kib<<10)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "exit" {
			break
		}
	}
}
