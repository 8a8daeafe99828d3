// Package customer talks to a vending machine as a customer outside the cluster does: through
// the API server's service proxy, so it needs no route to pod IPs and works on any cluster the
// kubeconfig reaches (the e2e suite, make demo, the recovery benchmark).
package customer

import (
	"context"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Client is one customer of one machine (its Service).
type Client struct {
	Clientset kubernetes.Interface
	Namespace string
	Service   string
}

// Response is the machine's answer, or the proxy's when the machine could not be reached.
type Response struct {
	Code int
	Body string
}

// Post sends a JSON body; key, when set, is the Idempotency-Key.
func (c Client) Post(ctx context.Context, path, body, key string) Response {
	req := c.proxy(c.Clientset.CoreV1().RESTClient().Post(), path).
		SetHeader("Content-Type", "application/json").Body([]byte(body))
	if key != "" {
		req = req.SetHeader("Idempotency-Key", key)
	}
	return do(req.Do(ctx))
}

// PostUntil retries a post, with the same key, while the machine cannot answer it (a 5xx from
// the machine or the proxy: it is restarting, or its Service has no ready endpoint yet), until
// timeout. Without a key a retry is only safe when the first attempt cannot have been applied.
func (c Client) PostUntil(ctx context.Context, path, body, key string, timeout time.Duration) Response {
	deadline := time.Now().Add(timeout)
	for {
		r := c.Post(ctx, path, body, key)
		if (r.Code != 0 && r.Code < 500) || time.Now().After(deadline) {
			return r
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// GetUntil retries a read while the machine cannot answer it, until timeout.
func (c Client) GetUntil(ctx context.Context, path string, timeout time.Duration) Response {
	deadline := time.Now().Add(timeout)
	for {
		r := c.Get(ctx, path)
		if (r.Code != 0 && r.Code < 500) || time.Now().After(deadline) {
			return r
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Get reads a path.
func (c Client) Get(ctx context.Context, path string) Response {
	return do(c.proxy(c.Clientset.CoreV1().RESTClient().Get(), path).Do(ctx))
}

func (c Client) proxy(r *rest.Request, path string) *rest.Request {
	return r.Namespace(c.Namespace).Resource("services").Name(c.Service + ":http").
		SubResource("proxy").Suffix(path).Timeout(10 * time.Second)
}

func do(res rest.Result) Response {
	var code int
	res.StatusCode(&code)
	body, err := res.Raw()
	if len(body) == 0 && err != nil {
		body = []byte(err.Error())
	}
	return Response{Code: code, Body: string(body)}
}
