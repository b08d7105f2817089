{{- define "tonebridge-dr.labels" -}}
app.kubernetes.io/name: tonebridge-dr
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- /* Labels of the operator pods (the Deployment's selector, the metrics Service's). */ -}}
{{- define "tonebridge-dr.selectorLabels" -}}
app.kubernetes.io/name: tonebridge-dr
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tonebridge-dr.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- /* Namespaces where backup and restore Jobs run: jobNamespaces, watchNamespaces and
       the release's, each once. */ -}}
{{- define "tonebridge-dr.jobNamespaces" -}}
{{- $all := concat .Values.jobNamespaces .Values.watchNamespaces (list .Release.Namespace) -}}
{{- toJson (uniq $all) -}}
{{- end -}}

{{- /* A Prometheus duration of one unit (30m, 6h, 2d) in seconds. */ -}}
{{- define "tonebridge-dr.seconds" -}}
{{- $text := toString . -}}
{{- $units := dict "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800 -}}
{{- $unit := substr (int (sub (len $text) 1)) (len $text) $text -}}
{{- if not (hasKey $units $unit) -}}
{{- fail (printf "duration %q: use one number and one unit of s, m, h, d, w" $text) -}}
{{- end -}}
{{- mul (int (trimSuffix $unit $text)) (get $units $unit) -}}
{{- end -}}
