{{- define "nodemesh.labels" -}}
app.kubernetes.io/part-of: nodemesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "nodemesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "nodemesh.meshdSelector" -}}
app.kubernetes.io/name: meshd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nodemesh.agentSelector" -}}
app.kubernetes.io/name: mesh-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nodemesh.validate" -}}
{{- if not (has .Values.ca.mode (list "builtin" "spire")) }}
{{- fail (printf "ca.mode must be builtin or spire, not %q" .Values.ca.mode) }}
{{- end }}
{{- if lt (int .Values.meshd.replicas) 1 }}
{{- fail "meshd.replicas must be at least 1" }}
{{- end }}
{{- end }}
