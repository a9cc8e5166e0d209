package session

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	positional = regexp.MustCompile(`\b(KEYS|ARGV)\s*\[`)
	byName     = regexp.MustCompile(`\b(key|arg)\.([A-Za-z_]\w*)`)
	// declared are the names a local, a for loop or a function's
	// parameters introduce; none may be key or arg, which would hide the
	// tables of names.
	declared = regexp.MustCompile(`\b(?:local|for)\s+(?:function\s+)?([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)|\bfunction\b[^(\n]*\(([^)]*)\)`)
)

// Every script's Lua reads its keys and arguments by name, only the names
// its tables declare, and every one of its own.
func TestScriptsReadOnlyTheirNames(t *testing.T) {
	if len(scripts) < 20 {
		t.Fatalf("%d scripts registered; every luaScript should be", len(scripts))
	}
	for _, l := range scripts {
		t.Run(l.name, func(t *testing.T) {
			lua := l.body
			if l.session {
				lua = prelude + l.body
			}
			if m := positional.FindString(lua); m != "" {
				t.Errorf("reads %s...]: read it by name", m)
			}
			used := map[string]map[string]bool{"key": {}, "arg": {}}
			for _, m := range byName.FindAllStringSubmatch(lua, -1) {
				used[m[1]][m[2]] = true
			}
			for table, names := range map[string][]string{"key": l.keys, "arg": l.args} {
				for n := range used[table] {
					if !slices.Contains(names, n) {
						t.Errorf("reads %s.%s, which its table does not declare (%v)", table, n, names)
					}
				}
				for _, n := range names {
					// a session script may leave one the store passes
					// every script unread (processed keeps the TTL)
					common := l.session && (slices.Contains(sessionKeys, n) || slices.Contains(sessionArgs, n))
					if !used[table][n] && !common {
						t.Errorf("declares %s.%s and never reads it", table, n)
					}
				}
			}
			for _, m := range declared.FindAllStringSubmatch(lua, -1) {
				for _, n := range strings.Split(m[1]+","+m[2], ",") {
					if n = strings.TrimSpace(n); n == "key" || n == "arg" {
						t.Errorf("%q hides the table %s", strings.TrimSpace(m[0]), n)
					}
				}
			}
		})
	}
}

// Every Go call of a script passes, by name in a literal, exactly the
// keys and arguments the script declares beyond those the store adds.
func TestCallersPassExactlyTheScriptsNames(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	byVar := map[string]*luaScript{}
	for _, l := range scripts {
		byVar[l.name+"Script"] = l
	}
	fset := token.NewFileSet()
	called := map[string]int{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.ValueSpec:
				for i, v := range n.Values {
					if c, ok := v.(*ast.CallExpr); ok && isIdent(c.Fun, "sessionScript", "plainScript") {
						name, _ := strconv.Unquote(c.Args[0].(*ast.BasicLit).Value)
						if n.Names[i].Name != name+"Script" || byVar[n.Names[i].Name] == nil {
							t.Errorf("%s: script %q is declared as %s: name it %sScript", fset.Position(n.Pos()), name, n.Names[i].Name, name)
						}
					}
				}
			case *ast.CallExpr:
				l := scriptOf(n, byVar)
				if l == nil {
					return true
				}
				called[l.name]++
				at := fset.Position(n.Pos())
				ownKeys, ownArgs := l.keys, l.args
				if l.session {
					ownKeys, ownArgs = l.keys[len(sessionKeys):], l.args[len(sessionArgs):]
				}
				gotKeys, gotArgs, ok := literalNames(n)
				if !ok {
					t.Errorf("%s: script %s: pass its keys and arguments as keyNames{...} and args{...} literals with constant names", at, l.name)
					return true
				}
				if diff := cmp.Diff(sorted(ownKeys), gotKeys); diff != "" {
					t.Errorf("%s: script %s: keys (-declared +passed):\n%s", at, l.name, diff)
				}
				if diff := cmp.Diff(sorted(ownArgs), gotArgs); diff != "" {
					t.Errorf("%s: script %s: arguments (-declared +passed):\n%s", at, l.name, diff)
				}
			}
			return true
		})
	}
	for _, l := range scripts {
		if called[l.name] == 0 {
			t.Errorf("script %s is never called", l.name)
		}
	}
}

// scriptOf is the script a call runs: a script variable passed to it, or
// the receiver of its run method.
func scriptOf(c *ast.CallExpr, byVar map[string]*luaScript) *luaScript {
	if sel, ok := c.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "run" {
		if id, ok := sel.X.(*ast.Ident); ok && byVar[id.Name] != nil {
			return byVar[id.Name]
		}
	}
	for _, a := range c.Args {
		if id, ok := a.(*ast.Ident); ok && byVar[id.Name] != nil {
			return byVar[id.Name]
		}
	}
	return nil
}

// literalNames are the names of the keyNames and args literals among a
// call's arguments (nil counts as none), sorted; ok is false if either is
// not a literal of constant names.
func literalNames(c *ast.CallExpr) (keys, argNames []string, ok bool) {
	keys, argNames = []string{}, []string{}
	seenArgs := false
	for _, a := range c.Args {
		if isIdent(a, "nil") {
			continue
		}
		lit, isLit := a.(*ast.CompositeLit)
		if !isLit || !isIdent(lit.Type, "keyNames", "args") {
			continue
		}
		names := []string{}
		for _, e := range lit.Elts {
			kv, isKV := e.(*ast.KeyValueExpr)
			if !isKV {
				return nil, nil, false
			}
			b, isStr := kv.Key.(*ast.BasicLit)
			if !isStr || b.Kind != token.STRING {
				return nil, nil, false
			}
			n, _ := strconv.Unquote(b.Value)
			names = append(names, n)
		}
		if isIdent(lit.Type, "keyNames") {
			keys = sorted(names)
		} else {
			argNames, seenArgs = sorted(names), true
		}
	}
	return keys, argNames, seenArgs
}

func isIdent(e ast.Expr, names ...string) bool {
	id, ok := e.(*ast.Ident)
	return ok && slices.Contains(names, id.Name)
}

func sorted(s []string) []string {
	out := append([]string{}, s...)
	slices.Sort(out)
	return out
}

// bind builds KEYS and ARGV in the declared order from exactly the
// declared names, whatever order a map gives them in.
func TestBind(t *testing.T) {
	l := &luaScript{name: "t", keys: []string{"a", "b"}, args: []string{"x", "y", "z"}}
	keys, argv, err := l.bind(keyNames{"b": "B", "a": "A"}, args{"z": 3, "x": 1, "y": 2})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"A", "B"}, keys); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]any{1, 2, 3}, argv); diff != "" {
		t.Errorf("argv (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		name string
		k    keyNames
		a    args
		want string
	}{
		{"a key missing", keyNames{"a": "A"}, args{"x": 1, "y": 2, "z": 3}, `script t: keys: "b" not given`},
		{"an argument missing", keyNames{"a": "A", "b": "B"}, args{"x": 1, "z": 3}, `script t: arguments: "y" not given`},
		{"an argument too many", keyNames{"a": "A", "b": "B"}, args{"x": 1, "y": 2, "z": 3, "w": 4}, `script t: arguments: "w" is not one of [x y z]`},
	} {
		_, _, err := l.bind(tc.k, tc.a)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
}

// The generated header binds each name to its position.
func TestHeader(t *testing.T) {
	got := header("t", "arg", "ARGV", []string{"now", "imageId"})
	if want := "local arg = {now = ARGV[1], imageId = ARGV[2]}\n"; got != want {
		t.Errorf("header %q, want %q", got, want)
	}
	for _, bad := range [][]string{{"now", "now"}, {"image-id"}, {"end;"}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("header of %q did not panic", bad)
				}
			}()
			header("t", "arg", "ARGV", bad)
		}()
	}
}
