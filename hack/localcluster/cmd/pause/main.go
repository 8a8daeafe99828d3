// Command pause is the pod sandbox's process: it holds the pod's namespaces and waits to be
// stopped. Built into the sandbox image of the local cluster.
package main

import (
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		// Reap children: the sandbox is pid 1 of the pod when the pid namespace is shared.
		for {
			var ws syscall.WaitStatus
			if _, err := syscall.Wait4(-1, &ws, 0, nil); err != nil {
				time.Sleep(time.Second) // no children yet
			}
		}
	}()
	<-stop
}
