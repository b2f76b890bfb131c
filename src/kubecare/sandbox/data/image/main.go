// kubecare-image: the one program in the sandbox's locally built images (no registry here).
//
//	pause   the pod sandbox's process: reaps zombies as PID 1, exits on SIGINT/SIGTERM
//	        (what registry.k8s.io/pause does)
//	http    a small web server on $PORT (8080): "/" answers the pod's hostname, "/healthz"
//	        200, "/ready" 200 once $READY_DELAY seconds have passed and while /tmp/unready is
//	        absent; on SIGTERM it stops accepting after $TERM_DELAY seconds (a graceful
//	        shutdown that takes the pod's grace period, as real servers do)
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

func seconds(name string) time.Duration {
	v, err := strconv.ParseFloat(os.Getenv(name), 64)
	if err != nil || v < 0 {
		return 0
	}
	return time.Duration(v * float64(time.Second))
}

func pause() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}

func serve() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	started := time.Now()
	readyAfter := seconds("READY_DELAY")
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, host) })
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := os.Stat("/tmp/unready"); err == nil || time.Since(started) < readyAfter {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	srv := &http.Server{Addr: ":" + port, Handler: mux}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		delay := seconds("TERM_DELAY")
		fmt.Printf("SIGTERM: stopping in %s\n", delay)
		time.Sleep(delay)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	fmt.Printf("serving on :%s\n", port)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("stopped")
}

func main() {
	mode := filepath.Base(os.Args[0])
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "pause":
		pause()
	case "http":
		serve()
	default:
		fmt.Fprintf(os.Stderr, "kubecare-image: unknown mode %q (pause, http)\n", mode)
		os.Exit(2)
	}
}
