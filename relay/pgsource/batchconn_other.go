//go:build !unix

package pgsource

import "net"

// newBatchConn returns c as it is: batched reads need SO_RCVLOWAT, which
// only Unix sockets offer. Reading per message is slower, not different.
func newBatchConn(c *net.TCPConn) net.Conn { return c }
