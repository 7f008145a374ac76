{{/* Names, labels and the few values computed in more than one template. */}}

{{- define "wicket.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wicket.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "wicket.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "wicket.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wicket.injectorName" -}}
{{- printf "%s-injector" (include "wicket.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wicket.guardianName" -}}
{{- printf "%s-guardian" (include "wicket.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wicket.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "wicket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component (injector, guardian). */}}
{{- define "wicket.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wicket.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The image reference; a digest pins it. */}}
{{- define "wicket.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "wicket.stdioImage" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- printf "%s:%s%s" .Values.image.repository $tag .Values.image.stdioTagSuffix -}}
{{- end -}}

{{/* Namespaces the webhook never mutates: the configured ones and the release's own. */}}
{{- define "wicket.excludedNamespaces" -}}
{{- $excluded := .Values.webhook.excludedNamespaces | default list -}}
{{- if not (has .Release.Namespace $excluded) -}}
{{- $excluded = append $excluded .Release.Namespace -}}
{{- end -}}
{{- toJson $excluded -}}
{{- end -}}

{{- define "wicket.certManager" -}}
{{- $mode := toString .Values.webhook.certManager.enabled -}}
{{- if or (eq $mode "true") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "cert-manager.io/v1")) -}}
true
{{- end -}}
{{- end -}}

{{- define "wicket.tlsSecretName" -}}
{{- printf "%s-tls" (include "wicket.injectorName" .) -}}
{{- end -}}

{{- define "wicket.guardianUrl" -}}
{{- if .Values.guardian.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "wicket.guardianName" .) .Release.Namespace (int .Values.guardian.port) -}}
{{- end -}}
{{- end -}}

{{/* Pod and container security settings shared by every workload of the chart. */}}
{{- define "wicket.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "wicket.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "wicket.policyConfigMap" -}}
{{- if .Values.sidecar.policyConfigMap -}}
{{- .Values.sidecar.policyConfigMap -}}
{{- else if .Values.policy.create -}}
wicket-policy
{{- end -}}
{{- end -}}
