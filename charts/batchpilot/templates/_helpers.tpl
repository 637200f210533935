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

{{/* Rules for BatchedModels and their children (application rules): exactly the calls the
operator makes (tests/unit/test_rbac_audit.py checks them against the code). */}}
{{- define "batchpilot.applicationRules" -}}
# The API the operator serves: kopf lists and watches it and patches its own annotations and
# finalizer; the reconciler reads one object at a time.
- apiGroups: ["batchpilot.dev"]
  resources: ["batchedmodels"]
  verbs: ["get", "list", "watch", "patch"]
# The reconciler and the tuning loop merge-patch the status (read with the object).
- apiGroups: ["batchpilot.dev"]
  resources: ["batchedmodels/status"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion on the children.
- apiGroups: ["batchpilot.dev"]
  resources: ["batchedmodels/finalizers"]
  verbs: ["update"]
# The children: read, watched, and server-side applied (an apply that creates the object
# needs create as well as patch); removed by the garbage collector through their owner
# references, so no delete. Their names follow the BatchedModels', so no resourceNames.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Runtime pods: listed and watched for status; patched only to touch an annotation so that
# the kubelet refreshes a mounted ConfigMap promptly after the tuning loop rewrites it. RBAC
# cannot narrow patch to the pods of the operator's Deployments (no label selectors in
# rules; pod names are generated): a namespaced install bounds it to the watched namespaces.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch"]
# Events about what the operator did (kopf posts core v1 Events and never updates them).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Rules for kopf's peering object: the watch sees every peering object of the kind
(kopf filters by name itself), the keep-alive patches only this release's. */}}
{{- define "batchpilot.peeringRules" -}}
- apiGroups: ["kopf.dev"]
  resources: [{{ .resource | quote }}]
  verbs: ["list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: [{{ .resource | quote }}]
  resourceNames: [{{ .name | quote }}]
  verbs: ["patch"]
{{- end }}
