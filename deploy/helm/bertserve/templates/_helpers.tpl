{{/* Names and labels shared by every template. */}}

{{- define "bertserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bertserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bertserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bertserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bertserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bertserve.labels" -}}
helm.sh/chart: {{ include "bertserve.chart" . }}
{{ include "bertserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference
{{- end }}

{{- define "bertserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bertserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bertserve.image" -}}
{{- $variant := ternary "gpu" "cpu" .Values.gpu.enabled }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $variant) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Settings the chart owns: refusing them in .Values.settings keeps one source of truth. */}}
{{- define "bertserve.reservedSettings" -}}
host port repo drain_timeout_s tensorrt_cache_dir api_key
{{- end }}

{{/* Render-time checks that a JSON schema cannot express. */}}
{{- define "bertserve.validate" -}}
{{- $l := .Values.lifecycle }}
{{- if le (int $l.terminationGracePeriodSeconds) (add $l.preStopSleepSeconds $l.drainTimeoutSeconds | int) }}
{{- fail (printf "lifecycle.terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + drainTimeoutSeconds (%v)" $l.terminationGracePeriodSeconds (add $l.preStopSleepSeconds $l.drainTimeoutSeconds)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are exclusive: KEDA creates its own HorizontalPodAutoscaler" }}
{{- end }}
{{- $reserved := splitList " " (include "bertserve.reservedSettings" .) }}
{{- range $key, $_ := .Values.settings }}
{{- if has $key $reserved }}
{{- fail (printf "settings.%s is set by the chart; use the dedicated value instead" $key) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.modelRepository.source "initContainer") (not .Values.modelRepository.initContainer.image) }}
{{- fail "modelRepository.source=initContainer needs modelRepository.initContainer.image" }}
{{- end }}
{{- end }}

{{- define "bertserve.pvcName" -}}
{{- default (printf "%s-models" (include "bertserve.fullname" .)) .Values.modelRepository.pvc.existingClaim }}
{{- end }}
