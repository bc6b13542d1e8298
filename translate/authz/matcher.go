package authz

import (
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// stringMatch turns an Istio value with wildcards into a StringMatcher, as
// Istio's StringMatcherWithPrefix does: "*" matches any non-empty value,
// "abc*" is a prefix, "*abc" a suffix, anything else exact. prefix (e.g.
// "spiffe://") is prepended to the value.
func stringMatch(v, prefix string, ignoreCase bool) *matcherv3.StringMatcher {
	m := &matcherv3.StringMatcher{IgnoreCase: ignoreCase}
	switch {
	case v == "*":
		return regexMatch(regexp.QuoteMeta(prefix) + ".+")
	case strings.HasPrefix(v, "*"):
		if prefix == "" {
			m.MatchPattern = &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}
		} else {
			return regexMatch(regexp.QuoteMeta(prefix) + ".*" + regexp.QuoteMeta(v[1:]))
		}
	case strings.HasSuffix(v, "*"):
		m.MatchPattern = &matcherv3.StringMatcher_Prefix{Prefix: prefix + v[:len(v)-1]}
	default:
		m.MatchPattern = &matcherv3.StringMatcher_Exact{Exact: prefix + v}
	}
	return m
}

func regexMatch(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{
		SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

// wildcardRegex turns a value with Istio wildcards into a regex fragment.
func wildcardRegex(v string) string {
	switch {
	case v == "*":
		return ".+"
	case strings.HasPrefix(v, "*"):
		return ".*" + regexp.QuoteMeta(v[1:])
	case strings.HasSuffix(v, "*"):
		return regexp.QuoteMeta(v[:len(v)-1]) + ".*"
	}
	return regexp.QuoteMeta(v)
}

// headerMatch matches a header against an Istio value ("*": present).
func headerMatch(name, v string, ignoreCase bool) *routev3.HeaderMatcher {
	if v == "*" {
		return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}
	}
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: stringMatch(v, "", ignoreCase)}}
}

// metadataMatch matches dynamic metadata of a filter at path against a
// string value; a claim may be a string or a list of strings, so both are
// accepted ("*": present).
func metadataMatch(filter string, path []string, v string, list bool) *matcherv3.MetadataMatcher {
	segs := make([]*matcherv3.MetadataMatcher_PathSegment, len(path))
	for i, p := range path {
		segs[i] = &matcherv3.MetadataMatcher_PathSegment{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: p}}
	}
	var value *matcherv3.ValueMatcher
	switch {
	case v == "*":
		value = &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_PresentMatch{PresentMatch: true}}
	case list:
		value = &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{
			MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: &matcherv3.ValueMatcher{
				MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: stringMatch(v, "", false)}}}}}}
	default:
		value = &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: stringMatch(v, "", false)}}
	}
	return &matcherv3.MetadataMatcher{Filter: filter, Path: segs, Value: value}
}
