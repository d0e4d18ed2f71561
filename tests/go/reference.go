// The reference for tests/test_reading.py: how Go's encoding/json (the decoder
// Ollama's handlers use, through gin's ShouldBindJSON) reads request bodies.
//
// stdin: one JSON object per line, {"route": "...", "body": "<base64>"}.
// stdout: one line per case: {"err": bool, "fields": {...}, "cloud": "..."}.
// With the argument "folds": every non-ASCII rune that Go's case folding (foldName)
// maps to an ASCII letter, as "U+XXXX X" lines.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"unicode"
)

// Mirrors of Ollama's request types, for the fields the gateway reads (same tags, same types).
type inference struct {
	Model  string `json:"model"`
	Stream *bool  `json:"stream,omitempty"`
}
type embed struct {
	Model string `json:"model"`
}
type show struct {
	Model   string `json:"model"`
	Verbose bool   `json:"verbose"`
	Name    string `json:"name"`
}
type byName struct {
	Model  string `json:"model"`
	Stream *bool  `json:"stream,omitempty"`
	Name   string `json:"name"`
}
type deleteReq struct {
	Model string `json:"model"`
	Name  string `json:"name"`
}
type create struct {
	Model      string            `json:"model"`
	Stream     *bool             `json:"stream,omitempty"`
	From       string            `json:"from,omitempty"`
	RemoteHost string            `json:"remote_host,omitempty"`
	Files      map[string]string `json:"files,omitempty"`
	DraftFiles map[string]string `json:"draft_files,omitempty"`
	Adapters   map[string]string `json:"adapters,omitempty"`
	Name       string            `json:"name"`
}
type copyReq struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
}
type openaiChat struct {
	Model  string `json:"model"`
	Stream bool   `json:"stream"`
}

func target(route string) any {
	switch route {
	case "/api/chat", "/api/generate", "/v1/responses":
		return &inference{}
	case "/api/embed", "/api/embeddings", "/v1/embeddings":
		return &embed{}
	case "/api/show":
		return &show{}
	case "/api/pull", "/api/push":
		return &byName{}
	case "/api/delete":
		return &deleteReq{}
	case "/api/create":
		return &create{}
	case "/api/copy":
		return &copyReq{}
	case "/v1/chat/completions", "/v1/completions", "/v1/messages":
		return &openaiChat{}
	}
	panic("unknown route " + route)
}

// As Ollama's server/cloud_proxy.go extractModelField reads the model.
func cloudModel(body []byte) *string {
	var payload map[string]json.RawMessage
	if err := json.Unmarshal(body, &payload); err != nil {
		return nil
	}
	raw, ok := payload["model"]
	if !ok {
		return nil
	}
	var model string
	if err := json.Unmarshal(raw, &model); err != nil {
		return nil
	}
	model = strings.TrimSpace(model)
	if model == "" {
		return nil
	}
	return &model
}

func folds() {
	for r := rune(0x80); r <= unicode.MaxRune; r++ {
		f := r
		for {
			next := unicode.SimpleFold(f)
			if next <= f {
				f = next
				break
			}
			f = next
		}
		if f < 0x80 {
			fmt.Printf("U+%04X %c\n", r, unicode.ToUpper(f))
		}
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "folds" {
		folds()
		return
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<20), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		var c struct {
			Route string `json:"route"`
			Body  []byte `json:"body"`
		}
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			panic(err)
		}
		v := target(c.Route)
		err := json.NewDecoder(bytes.NewReader(c.Body)).Decode(v)
		result := map[string]any{"err": err != nil, "fields": v}
		if strings.HasPrefix(c.Route, "/v1/") {
			result["cloud"] = cloudModel(c.Body)
		}
		line, _ := json.Marshal(result)
		out.Write(line)
		out.WriteByte('\n')
	}
}
