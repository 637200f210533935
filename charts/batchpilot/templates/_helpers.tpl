{{/* The chart name, or nameOverride. */}}
{{- define "batchpilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the objects: the release name, with the chart name unless it holds it. */}}
{{- define "batchpilot.fullname" -}}
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

{{/* Labels of the operator pod's selector (immutable). */}}
{{- define "batchpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "batchpilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "batchpilot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "batchpilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: batchpilot
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "batchpilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "batchpilot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference. */}}
{{- define "batchpilot.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Rules for BatchedModels and their children (application rules). */}}
{{- define "batchpilot.applicationRules" -}}
# The API the operator serves.
- apiGroups: ["batchpilot.dev"]
  resources: ["batchedmodels"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["batchpilot.dev"]
  resources: ["batchedmodels/status"]
  verbs: ["get", "patch"]
# Owner references with blockOwnerDeletion on the children.
- apiGroups: ["batchpilot.dev"]
  resources: ["batchedmodels/finalizers"]
  verbs: ["update"]
# The children, created and corrected by server-side apply; removed by the garbage
# collector through their owner references, so no delete.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Runtime pods: read for status and conditions; patch to touch an annotation so that the
# kubelet refreshes a mounted ConfigMap promptly after the tuning loop rewrites it.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
# Events about what the operator did to a BatchedModel.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
