// gen_kube_tables: the type tables kubecare decodes etcd values with (src/kubecare/etcd/tables/).
// Walks every Go type reachable from the kinds kube-apiserver serves (legacyscheme +
// apiextensions + apiregistration) by reflection over the real k8s.io/api types, and emits per
// struct type, in encoding/json order: json name, omitempty/omitzero, Go kind, protobuf field
// number and the wire type the generated code really writes (from the Go kind, not the struct
// tag, which is wrong for ~100 pointer fields), element type; plus the types with custom JSON or
// protobuf marshalling, which kubecare implements by hand. Run through scripts/gen_kube_tables.py.
// Usage: gen_kube_tables > table.json ; statistics go to stderr.
package main

import (
	"encoding"
	gojson "encoding/json"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextv1beta1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1beta1"
	"k8s.io/apimachinery/pkg/runtime"
	aggv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	aggv1beta1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1beta1"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	_ "k8s.io/kubernetes/pkg/controlplane"
)

type Field struct {
	Go        string `json:"go"`               // Go field name
	JSON      string `json:"json,omitempty"`   // "" = not in JSON (json:"-")
	OmitEmpty bool   `json:"omitempty,omitempty"`
	OmitZero  bool   `json:"omitzero,omitempty"`
	Kind      string `json:"kind"`             // string,bool,int32,int64,float64,bytes,struct,ptr,slice,map,interface
	Elem      string `json:"elem,omitempty"`   // type id of struct / element / map value
	Key       string `json:"key,omitempty"`    // map key Go kind
	Proto     int    `json:"proto,omitempty"`  // proto field number, 0 = not in proto
	Wire      string `json:"wire,omitempty"`   // varint, bytes, fixed64 (from the Go kind, NOT from the tag)
	TagWire   string `json:"tagwire,omitempty"` // wire type written in the struct tag when it differs
	Inline    bool   `json:"inline,omitempty"` // anonymous struct without json name: fields promoted (encoding/json)
}

type Type struct {
	Fields []Field `json:"fields,omitempty"`
	Custom string  `json:"custom,omitempty"` // json.Marshaler / TextMarshaler / proto special
	Kind   string  `json:"kind,omitempty"`   // for named non-struct types
}

var (
	types       = map[string]*Type{}
	jsonMarsh   = reflect.TypeOf((*gojson.Marshaler)(nil)).Elem()
	textMarsh   = reflect.TypeOf((*encoding.TextMarshaler)(nil)).Elem()
	protoUnmarsh = reflect.TypeOf((*interface{ Unmarshal([]byte) error })(nil)).Elem()
	conflicts   []string
)

func id(t reflect.Type) string {
	if t.Name() == "" {
		return t.String()
	}
	return t.PkgPath() + "." + t.Name()
}

func goKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "bytes"
		}
		return "slice"
	case reflect.Ptr:
		return "ptr"
	}
	return t.Kind().String()
}

func wireOf(t reflect.Type) string {
	for t.Kind() == reflect.Ptr || (t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8) {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint32, reflect.Uint64:
		return "varint"
	case reflect.Float64:
		return "fixed64"
	case reflect.Float32:
		return "fixed32"
	}
	return "bytes"
}

func custom(t reflect.Type) string {
	var c []string
	if t.Implements(jsonMarsh) || reflect.PointerTo(t).Implements(jsonMarsh) {
		c = append(c, "json")
	}
	if t.Implements(textMarsh) || reflect.PointerTo(t).Implements(textMarsh) {
		c = append(c, "text")
	}
	return strings.Join(c, ",")
}

// walk registers t (and everything it reaches) in types.
func walk(t reflect.Type) {
	for t.Kind() == reflect.Ptr || t.Kind() == reflect.Slice || t.Kind() == reflect.Map || t.Kind() == reflect.Array {
		if t.Kind() == reflect.Map {
			walk(t.Key())
		}
		if t.Name() != "" && t.Kind() != reflect.Ptr { // named slice/map (e.g. ResourceList, ExtraValue)
			if _, ok := types[id(t)]; !ok {
				ty := &Type{Kind: goKind(t), Custom: custom(t)}
				if reflect.PointerTo(t).Implements(protoUnmarsh) {
					ty.Custom = strings.Trim(ty.Custom+",proto-wrapper", ",")
				}
				types[id(t)] = ty
			}
		}
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		if t.Name() != "" && t.PkgPath() != "" {
			if _, ok := types[id(t)]; !ok {
				types[id(t)] = &Type{Kind: goKind(t), Custom: custom(t)}
			}
		}
		return
	}
	if _, ok := types[id(t)]; ok {
		return
	}
	ty := &Type{Custom: custom(t)}
	types[id(t)] = ty
	ty.Fields = fields(t, nil, map[string]int{})
	for _, f := range ty.Fields {
		_ = f
	}
	for i := 0; i < t.NumField(); i++ {
		walk(t.Field(i).Type)
	}
}

// fields follows encoding/json: anonymous struct fields without a json name are inlined.
func fields(t reflect.Type, path []int, seen map[string]int) []Field {
	var out []Field
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if !sf.IsExported() && !sf.Anonymous {
			continue
		}
		tag := sf.Tag.Get("json")
		if tag == "-" && sf.Tag.Get("protobuf") == "" {
			continue
		}
		parts := strings.Split(tag, ",")
		name := parts[0]
		hidden := tag == "-" // in protobuf only (RawExtension.Raw, FieldsV1.Raw, ...)
		ft := sf.Type
		if sf.Anonymous && name == "" && (ft.Kind() == reflect.Struct || (ft.Kind() == reflect.Ptr && ft.Elem().Kind() == reflect.Struct)) {
			if ft.Kind() == reflect.Ptr {
				ft = ft.Elem()
			}
			if custom(ft) == "" { // embedded Marshaler is not inlined by encoding/json
				f := Field{Go: sf.Name, Inline: true, Kind: goKind(sf.Type), Elem: id(ft)}
				if pt := sf.Tag.Get("protobuf"); pt != "" {
					pp := strings.Split(pt, ",")
					f.Proto, _ = strconv.Atoi(pp[1])
					f.Wire = "bytes"
				}
				for _, x := range fields(ft, append(append([]int{}, path...), i), seen) { // conflict check only
					_ = x
				}
				out = append(out, f)
				continue
			}
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		if d, ok := seen[name]; ok {
			conflicts = append(conflicts, fmt.Sprintf("%s.%s (depth %d vs %d)", id(t), name, d, len(path)))
		}
		seen[name] = len(path)
		f := Field{Go: sf.Name, JSON: name, Kind: goKind(ft)}
		if hidden {
			f.JSON = ""
		}
		for _, p := range parts[1:] {
			switch p {
			case "omitempty":
				f.OmitEmpty = true
			case "omitzero":
				f.OmitZero = true
			}
		}
		if pt := sf.Tag.Get("protobuf"); pt != "" {
			pp := strings.Split(pt, ",")
			if len(pp) < 2 {
				conflicts = append(conflicts, fmt.Sprintf("odd protobuf tag %q on %s.%s", pt, id(t), sf.Name))
				pp = []string{"?", "0"}
			}
			f.Proto, _ = strconv.Atoi(pp[1])
			f.Wire = wireOf(ft)
			tw := map[string]string{"bytes": "bytes", "varint": "varint", "fixed64": "fixed64"}[pp[0]]
			if tw != f.Wire {
				f.TagWire = pp[0]
			}
		}
		et := ft
		wrapper := func(t reflect.Type) bool { return t.Name() != "" && (custom(t) != "" || reflect.PointerTo(t).Implements(protoUnmarsh)) }
		for et.Kind() == reflect.Ptr || (et.Kind() == reflect.Slice && et.Elem().Kind() != reflect.Uint8 && !wrapper(et)) || (et.Kind() == reflect.Map && !wrapper(et)) {
			if et.Kind() == reflect.Map {
				f.Key = goKind(et.Key())
			}
			et = et.Elem()
		}
		if et.Name() != "" && et.PkgPath() != "" {
			f.Elem = id(et)
		} else if et != ft {
			f.Elem = goKind(et)
		}
		out = append(out, f)
	}
	return out
}

func main() {
	roots := map[string]reflect.Type{}
	add := func(s *runtime.Scheme) {
		for gvk, t := range s.AllKnownTypes() {
			if gvk.Version == runtime.APIVersionInternal {
				continue
			}
			if _, ok := t.FieldByName("ObjectMeta"); !ok && !strings.HasSuffix(gvk.Kind, "List") {
				continue // options, reviews, status, ...: not stored
			}
			if strings.HasSuffix(gvk.Kind, "List") {
				continue
			}
			roots[gvk.GroupVersion().String()+"/"+gvk.Kind] = t
		}
	}
	add(legacyscheme.Scheme)
	s := runtime.NewScheme()
	apiextv1.AddToScheme(s)
	apiextv1beta1.AddToScheme(s)
	aggv1.AddToScheme(s)
	aggv1beta1.AddToScheme(s)
	add(s)
	var keys []string
	for k, t := range roots {
		keys = append(keys, k)
		walk(t)
	}
	sort.Strings(keys)
	rootIDs := map[string]string{}
	for _, k := range keys {
		rootIDs[k] = id(roots[k])
	}
	nStruct, nFields, nProto, nCustom, nTagWire := 0, 0, 0, 0, 0
	var customs, tagwires []string
	for k, t := range types {
		if t.Fields != nil || t.Kind == "" {
			nStruct++
		}
		nFields += len(t.Fields)
		for _, f := range t.Fields {
			if f.Proto > 0 {
				nProto++
			}
			if f.TagWire != "" {
				nTagWire++
				tagwires = append(tagwires, k+"."+f.Go+" tag="+f.TagWire+" real="+f.Wire)
			}
		}
		if t.Custom != "" {
			nCustom++
			customs = append(customs, k+" ["+t.Custom+"]")
		}
	}
	sort.Strings(customs)
	sort.Strings(tagwires)
	fmt.Fprintf(os.Stderr, "kinds (group/version/kind with ObjectMeta): %d\ntypes: %d (structs %d)\nfields: %d (with proto tag %d)\ncustom-marshalled types: %d\n", len(keys), len(types), nStruct, nFields, nProto, nCustom)
	for _, c := range customs {
		fmt.Fprintln(os.Stderr, "  custom:", c)
	}
	for _, c := range tagwires {
		fmt.Fprintln(os.Stderr, "  tag wire type differs:", c)
	}
	for _, c := range conflicts {
		fmt.Fprintln(os.Stderr, "  json name conflict:", c)
	}
	enc := gojson.NewEncoder(os.Stdout)
	enc.Encode(map[string]interface{}{"kinds": rootIDs, "types": types})
}
