package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// decodeYAML decodes data onto out strictly: unknown keys and ill-typed
// values are errors that name the dotted key path, which yaml.v3 alone does
// not do.
func decodeYAML(data []byte, out *Config) error {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return err
	}
	if len(root.Content) == 0 { // empty file: all defaults
		return nil
	}
	return decodeNode(root.Content[0], reflect.ValueOf(out).Elem(), "")
}

var durationType = reflect.TypeOf(Duration(0))

func decodeNode(n *yaml.Node, v reflect.Value, path string) error {
	name := path
	if name == "" {
		name = "top level"
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch {
	case v.Type() == durationType:
		var s string
		if n.Kind != yaml.ScalarNode || n.Decode(&s) != nil {
			return fmt.Errorf("%s: expected a duration such as 10s (line %d)", name, n.Line)
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%s: %q is not a duration such as 10s or 250ms (line %d)", name, s, n.Line)
		}
		v.SetInt(int64(d))
		return nil
	case v.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if n.Tag == "!!null" {
				return nil
			}
			return fmt.Errorf("%s: expected a mapping of keys (line %d)", name, n.Line)
		}
		fields := map[string]reflect.Value{}
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
			if tag != "" && tag != "-" {
				fields[tag] = v.Field(i)
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			full := key
			if path != "" {
				full = path + "." + key
			}
			f, ok := fields[key]
			if !ok {
				return fmt.Errorf("%s: unknown key (line %d)", full, n.Content[i].Line)
			}
			if err := decodeNode(n.Content[i+1], f, full); err != nil {
				return err
			}
		}
		return nil
	default:
		target := reflect.New(v.Type())
		if err := n.Decode(target.Interface()); err != nil {
			var te *yaml.TypeError
			if errors.As(err, &te) {
				return fmt.Errorf("%s: expected %s, got %q (line %d)", name, kindName(v.Type()), n.Value, n.Line)
			}
			return fmt.Errorf("%s: %v", name, err)
		}
		v.Set(target.Elem())
		return nil
	}
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int64:
		return "a whole number"
	case reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list of " + kindName(t.Elem()) + "s"
	}
	return t.String()
}

// UnmarshalYAML reads an api_keys entry: a bare key string, or a mapping
// with exactly the keys name and key.
func (k *APIKey) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return n.Decode(&k.Key)
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("expected a key or {name, key} (line %d)", n.Line)
	}
	*k = APIKey{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		var dst *string
		switch n.Content[i].Value {
		case "name":
			dst = &k.Name
		case "key":
			dst = &k.Key
		default:
			return fmt.Errorf("api key entry: unknown key %q (line %d)", n.Content[i].Value, n.Content[i].Line)
		}
		if v := n.Content[i+1]; v.Kind != yaml.ScalarNode || v.Decode(dst) != nil {
			return fmt.Errorf("api key entry: %s must be a string (line %d)", n.Content[i].Value, v.Line)
		}
	}
	return nil
}
