{{/* Names, labels and the pieces of the DaemonSet that several templates share. */}}

{{- define "airlock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "airlock.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "airlock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "airlock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "airlock.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "airlock.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: airlock
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "airlock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "airlock.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "airlock.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The ConfigMap's mount point; the agent reads policy.yaml there. */}}
{{- define "airlock.configDir" -}}/etc/airlock{{- end -}}

{{/*
The agent's --metrics-addr. With hostNetwork the pod IP is the node's address;
$(POD_IP) is expanded by the kubelet from the container's env.
*/}}
{{- define "airlock.metricsAddr" -}}
{{- $port := int .Values.metrics.port -}}
{{- if eq .Values.metrics.listen "podIP" -}}
{{- printf "$(POD_IP):%d" $port -}}
{{- else if eq .Values.metrics.listen "podIPv6" -}}
{{- printf "[$(POD_IP)]:%d" $port -}}
{{- else if eq .Values.metrics.listen "loopback" -}}
{{- printf "127.0.0.1:%d" $port -}}
{{- else -}}
{{- printf "0.0.0.0:%d" $port -}}
{{- end -}}
{{- end -}}

{{/* --iface globs from ifacePattern (a string or a list). */}}
{{- define "airlock.ifacePatterns" -}}
{{- $p := .Values.ifacePattern -}}
{{- if kindIs "string" $p -}}
{{- if $p }}{{ list $p | toJson }}{{ else }}[]{{ end -}}
{{- else -}}
{{- toJson $p -}}
{{- end -}}
{{- end -}}

{{/*
The policy file: the `policy` value, keys in the order docs/policy.md documents them,
with `interfaces` from the `interfaces` value and, unless the endpoint listens on
loopback only, a last rule letting metrics.allowFrom reach the metrics port.
*/}}
{{- define "airlock.policy" -}}
{{- $p := .Values.policy -}}
# Rendered by the airlock Helm chart from its `interfaces`, `policy` and
# `metrics.allowFrom` values.
# The agent reloads this file when it changes (no restart): edit the values and
# `helm upgrade`, or edit this ConfigMap. Check a policy with `airlock validate -f`.
version: {{ $p.version }}
interfaces: {{ toJson .Values.interfaces }}
{{- with $p.mode }}
mode: {{ . }}
{{- end }}
{{- with $p.default }}
default: {{ . }}
{{- end }}
{{- with $p.management }}
management:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with $p.sets }}
sets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with $p.deny }}
deny:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- $metricsRule := and .Values.metrics.allowFrom (ne .Values.metrics.listen "loopback") }}
{{- if or $p.rules $metricsRule }}
rules:
{{- range $p.rules }}
  - name: {{ .name }}
    ports: {{ toJson .ports }}
    from: {{ toJson .from }}
{{- end }}
{{- if $metricsRule }}
  # From the chart's metrics.allowFrom: who may read the agent's metrics.
  - name: airlock-metrics
    ports: [{{ printf "%d/tcp" (int .Values.metrics.port) | quote }}]
    from: {{ toJson .Values.metrics.allowFrom }}
{{- end }}
{{- end }}
{{- end -}}
