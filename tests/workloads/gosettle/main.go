// A Go service whose heap grows while its session cache warms, then settles (memlens
// integration tests: healthy growth that must raise no event):
//
//	gosettle <MiB of sessions> <seconds to fill>
//
// Each request, from one of as many users as the cache has room for, picked at random,
// allocates a 64 KiB response that becomes garbage at once; a user met for the first time gets
// a 256 KiB session, kept. So the cache fills as caches of random keys do, fast at first and
// ever slower (95% full after the given time), and the collector keeps the heap at about twice
// the sessions, a sawtooth underneath. Prints "full" when 95% of users have a session, and
// exits on "exit" (or the end of its input). Built with Debian's golang-go, default flags.
package main

import (
	"bufio"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"time"
)

const (
	sessionSize  = 256 << 10
	responseSize = 64 << 10
)

var sink []byte

//go:noinline
func respond() {
	buf := make([]byte, responseSize)
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = byte(i)
	}
	sink = buf
}

//go:noinline
func openSession() []byte {
	s := make([]byte, sessionSize)
	for i := 0; i < len(s); i += 4096 {
		s[i] = 1
	}
	return s
}

func serve(users int, fill time.Duration) {
	sessions := make(map[int][]byte, users)
	// 3 requests per user over the fill time leave e^-3 (5%) of users unseen.
	tick := fill / time.Duration(3*users)
	full := false
	for {
		respond()
		user := rand.Intn(users)
		if _, ok := sessions[user]; !ok {
			sessions[user] = openSession()
		}
		if !full && len(sessions)*20 >= users*19 {
			full = true
			fmt.Println("full")
		}
		time.Sleep(tick)
	}
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gosettle <MiB of sessions> <seconds to fill>")
		os.Exit(2)
	}
	mib, err1 := strconv.Atoi(os.Args[1])
	seconds, err2 := strconv.Atoi(os.Args[2])
	if err1 != nil || err2 != nil || mib <= 0 || seconds <= 0 {
		fmt.Fprintln(os.Stderr, "usage: gosettle <MiB of sessions> <seconds to fill>")
		os.Exit(2)
	}
	go serve(mib*(1<<20)/sessionSize, time.Duration(seconds)*time.Second)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "exit" {
			break
		}
	}
}
