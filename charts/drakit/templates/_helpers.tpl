{{/* Names. */}}
{{- define "drakit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "drakit.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "drakit.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "drakit.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "drakit.labels" -}}
app.kubernetes.io/name: {{ include "drakit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "drakit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "drakit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{- define "drakit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "drakit.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* image: (list . .Values.<component>.image) */}}
{{- define "drakit.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $registry := default $root.Values.image.registry $img.registry -}}
{{- $tag := default (default $root.Chart.AppVersion $root.Values.image.tag) $img.tag -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry $img.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Which containers run. */}}
{{- define "drakit.netdevEnabled" -}}
{{- if and .Values.drivers.net.enabled .Values.netdev.enabled -}}true{{- end -}}
{{- end -}}
{{- define "drakit.cpuEnabled" -}}
{{- if and .Values.drivers.cpu.enabled .Values.cpuAllocator.enabled -}}true{{- end -}}
{{- end -}}
{{/* The NRI sidecar runs when one of its concerns has work: runtime-spec edits, cpusets, or pod attach in nri mode. */}}
{{- define "drakit.nriRuntimeSpec" -}}
{{- if .Values.drivers.runtime.enabled -}}true{{- end -}}
{{- end -}}
{{- define "drakit.nriNetdev" -}}
{{- if and (include "drakit.netdevEnabled" .) (eq .Values.net.attachMode "nri") -}}true{{- end -}}
{{- end -}}
{{- define "drakit.nriEnabled" -}}
{{- if and .Values.nri.enabled (or (include "drakit.nriRuntimeSpec" .) (include "drakit.cpuEnabled" .) (include "drakit.nriNetdev" .)) -}}true{{- end -}}
{{- end -}}
{{- define "drakit.anyDriver" -}}
{{- if or .Values.drivers.net.enabled .Values.drivers.cpu.enabled .Values.drivers.runtime.enabled -}}true{{- end -}}
{{- end -}}
