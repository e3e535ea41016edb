// A Go service leaking through a deep copy (memlens integration tests).
//
//	goleak <MiB>
//
// deepCopy copies 1 MiB into a fresh slice that is kept forever: the first touch of its pages
// happens in runtime.memmove, a frameless assembly leaf, called by deepCopy. Prints
// "leaked <bytes>" when done, then waits for "exit" (or the end of its input). Built with
// Debian's golang-go, default flags (and stripped by a test). No churn beside it: the Go
// runtime would hand the churn's freed pages to the leak, and the page-level answer names the
// code that first touched a page (allocation-level attribution is another issue's).
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
)

const mib = 1 << 20

var kept [][]byte

//go:noinline
func deepCopy(src []byte) []byte {
	dst := make([]byte, len(src))
	copy(dst, src)
	return dst
}

func main() {
	total := 64
	if len(os.Args) > 1 {
		if n, err := strconv.Atoi(os.Args[1]); err == nil {
			total = n
		}
	}
	src := make([]byte, mib)
	for i := range src {
		src[i] = byte(i * 7)
	}
	for i := 0; i < total; i++ {
		kept = append(kept, deepCopy(src))
	}
	fmt.Printf("leaked %d\n", total*mib)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "exit" {
			break
		}
	}
}
