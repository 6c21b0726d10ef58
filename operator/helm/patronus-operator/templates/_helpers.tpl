{{/*
Base of every resource name: the release name, with "-patronus" appended
unless it already says patronus. Components add their own suffix.
*/}}
{{- define "patronus.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains "patronus" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-patronus" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "patronus.operator.fullname" -}}
{{- printf "%s-operator" (include "patronus.fullname" .) -}}
{{- end -}}

{{- define "patronus.controlplane.fullname" -}}
{{- printf "%s-controlplane" (include "patronus.fullname" .) -}}
{{- end -}}

{{- define "patronus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every resource carries, besides name and instance. */}}
{{- define "patronus.labels" -}}
helm.sh/chart: {{ include "patronus.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: patronus
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "patronus.operator.selectorLabels" -}}
app.kubernetes.io/name: patronus-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "patronus.operator.labels" -}}
{{ include "patronus.labels" . }}
{{ include "patronus.operator.selectorLabels" . }}
{{- end -}}

{{- define "patronus.controlplane.selectorLabels" -}}
app.kubernetes.io/name: patronus-controlplane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controlplane
{{- end -}}

{{- define "patronus.controlplane.labels" -}}
{{ include "patronus.labels" . }}
{{ include "patronus.controlplane.selectorLabels" . }}
{{- end -}}

{{/* Labels of resources that belong to no single component. */}}
{{- define "patronus.common.labels" -}}
{{ include "patronus.labels" . }}
app.kubernetes.io/name: patronus
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image of every binary. */}}
{{- define "patronus.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "patronus.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- .Values.operator.serviceAccount.name | default (include "patronus.operator.fullname" .) -}}
{{- else -}}
{{- .Values.operator.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "patronus.operator.leaseName" -}}
{{- .Values.operator.leaseName | default (printf "%s-leader" (include "patronus.operator.fullname" .)) -}}
{{- end -}}

{{/* The Secret holding the control plane's bearer token (key `token`). */}}
{{- define "patronus.tokenSecretName" -}}
{{- .Values.controlplane.auth.existingSecret | default (printf "%s-token" (include "patronus.controlplane.fullname" .)) -}}
{{- end -}}

{{/* The Secret holding the key of the data planes' per-site tokens (key `key`). */}}
{{- define "patronus.dataplaneKeySecretName" -}}
{{- .Values.controlplane.auth.dataplaneKeySecret | default (printf "%s-dataplane-key" (include "patronus.controlplane.fullname" .)) -}}
{{- end -}}

{{/* The data-plane key volume both the control plane and the operator mount. */}}
{{- define "patronus.dataplaneKeyVolume" -}}
- name: dataplane-key
  secret:
    secretName: {{ include "patronus.dataplaneKeySecretName" . }}
    defaultMode: 0440
    items:
      - key: key
        path: key
{{- end -}}

{{/* The Secret with the API's TLS certificate: the user's, the generated or
cert-manager's one, or "" for clear text. */}}
{{- define "patronus.tlsSecretName" -}}
{{- $tls := .Values.controlplane.tls -}}
{{- if $tls.secretName -}}
{{- $tls.secretName -}}
{{- else if ne $tls.generate "none" -}}
{{- printf "%s-tls" (include "patronus.controlplane.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The names the API's certificate is issued for. */}}
{{- define "patronus.controlplane.dnsNames" -}}
{{- $name := include "patronus.controlplane.fullname" . -}}
{{- list $name (printf "%s.%s" $name .Release.Namespace) (printf "%s.%s.svc" $name .Release.Namespace) (printf "%s.%s.svc.cluster.local" $name .Release.Namespace) | toJson -}}
{{- end -}}

{{/* Where the operator (and patronusctl inside the cluster) reach the API. */}}
{{- define "patronus.controlplane.url" -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" (not (empty (include "patronus.tlsSecretName" .)))) (include "patronus.controlplane.fullname" .) .Release.Namespace (int .Values.controlplane.grpcPort) -}}
{{- end -}}

{{/* The token volume both the control plane and the operator mount. */}}
{{- define "patronus.tokenVolume" -}}
- name: token
  secret:
    secretName: {{ include "patronus.tokenSecretName" . }}
    defaultMode: 0440
    items:
      - key: token
        path: token
{{- end -}}
