{{/* The chart name, or nameOverride. */}}
{{- define "idp-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name: the release name, plus the chart name unless it is in it. */}}
{{- define "idp-bridge.fullname" -}}
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

{{- define "idp-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "idp-bridge.labels" -}}
helm.sh/chart: {{ include "idp-bridge.chart" . }}
{{ include "idp-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: idp-bridge
{{- end }}

{{/* Labels that select the operator pods. */}}
{{- define "idp-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "idp-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "idp-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "idp-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the appVersion. */}}
{{- define "idp-bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* RUST_LOG: log.filter verbatim, else the level with the libraries capped at warn. */}}
{{- define "idp-bridge.rustLog" -}}
{{- if .Values.log.filter }}
{{- .Values.log.filter }}
{{- else if has .Values.log.level (list "error" "warn") }}
{{- .Values.log.level }}
{{- else }}
{{- printf "%s,kube_runtime=warn,kube_client=warn,hyper=warn,hyper_util=warn,h2=warn,rustls=warn,tower=warn" .Values.log.level }}
{{- end }}
{{- end }}

{{/* --endpoint-overrides: HOST=URL pairs, sorted by host. */}}
{{- define "idp-bridge.endpointOverrides" -}}
{{- $pairs := list }}
{{- range $host, $url := .Values.endpointOverrides }}
{{- $pairs = append $pairs (printf "%s=%s" $host $url) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* Where the CA bundle is mounted. */}}
{{- define "idp-bridge.caBundleDir" -}}
/etc/idp-bridge/ca-bundle
{{- end }}

{{/* Checks of combinations the schema cannot express; fails the render with a clear message. */}}
{{- define "idp-bridge.validate" -}}
{{- if and .Values.caBundle.secretName .Values.caBundle.configMapName }}
{{- fail "caBundle: set either secretName or configMapName, not both" }}
{{- end }}
{{- if .Values.rbac.scimSecrets }}
{{- fail "rbac.scimSecrets was replaced by rbac.scimSecretNamespaces: list the namespaces whose connections use Cloudflare SCIM (write access to Secrets is never granted cluster-wide)" }}
{{- end }}
{{- range .Values.rbac.scimSecretNamespaces }}
{{- if and $.Values.watchNamespaces (not (has . $.Values.watchNamespaces)) }}
{{- fail (printf "rbac.scimSecretNamespaces lists %s, which is not in watchNamespaces: the operator would never reconcile a connection there" .) }}
{{- end }}
{{- end }}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicas is %d but leaderElection.enabled is false: several replicas without leader election would all reconcile; enable leader election or set replicas: 1" (int .Values.replicas)) }}
{{- end }}
{{- end }}

{{/* Rules for the resources the operator reconciles in one scope (a namespace or the cluster). */}}
{{- define "idp-bridge.namespacedRules" -}}
# Connections: watched, read, finalizer added and removed by JSON patch on the resource.
- apiGroups: ["idpbridge.io"]
  resources: ["azureadconnections"]
  verbs: ["get", "list", "watch", "patch"]
# Status is written by server-side apply.
- apiGroups: ["idpbridge.io"]
  resources: ["azureadconnections/status", "identitybrokers/status", "azureadclientsecrets/status"]
  verbs: ["patch"]
# AzureAdClientSecrets: watched and read; their Secret is written only where
# rbac.clientSecretNamespaces allows.
- apiGroups: ["idpbridge.io"]
  resources: ["azureadclientsecrets"]
  verbs: ["get", "list", "watch"]
# IdentityBrokers: watched, read, and the in-use finalizer added and removed by a merge patch of
# metadata.finalizers (while a connection with deletionPolicy Delete uses the broker).
- apiGroups: ["idpbridge.io"]
  resources: ["identitybrokers"]
  verbs: ["get", "list", "watch", "patch"]
# Client secrets and broker credentials are read; Secrets are watched metadata-only. No write:
# RBAC cannot limit patch to the in-use finalizer, so IdentityBroker credential Secrets here are
# protected only where a platform team grants patch (see the README).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# Events on connections (events.k8s.io/v1; a repeated event is patched).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Rules for writing Cloudflare SCIM credentials, only in rbac.scimSecretNamespaces. */}}
{{- define "idp-bridge.scimRules" -}}
# SCIM base URL and token (Cloudflare), written by server-side apply. RBAC cannot limit create to
# names, so this Role exists only in the namespaces listed in rbac.scimSecretNamespaces.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch"]
# The SCIM Secret is owned by its connection (blockOwnerDeletion), which the
# OwnerReferencesPermissionEnforcement admission plugin checks against this subresource.
- apiGroups: ["idpbridge.io"]
  resources: ["azureadconnections/finalizers"]
  verbs: ["update"]
{{- end }}

{{/* Rules for writing rotated client secrets, only in rbac.clientSecretNamespaces. */}}
{{- define "idp-bridge.clientSecretRules" -}}
# The Secret an AzureAdClientSecret writes, by server-side apply (no ownerReference: deleting
# the AzureAdClientSecret must not delete the Secret its consumers read).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Rules that are cluster-wide in either mode. */}}
{{- define "idp-bridge.clusterRules" -}}
# ClusterIdentityBrokers: watched, read, their in-use finalizer patched and their status written.
- apiGroups: ["idpbridge.io"]
  resources: ["clusteridentitybrokers"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["idpbridge.io"]
  resources: ["clusteridentitybrokers/status"]
  verbs: ["patch"]
# A connection's namespace labels, for a ClusterIdentityBroker's allowedNamespaces (a
# metadata-only cache of Namespaces).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* --http-address: IPv6 addresses in brackets. */}}
{{- define "idp-bridge.httpAddress" -}}
{{- if contains ":" .Values.metrics.bindAddress }}
{{- printf "[%s]:%d" .Values.metrics.bindAddress (int .Values.metrics.port) }}
{{- else }}
{{- printf "%s:%d" .Values.metrics.bindAddress (int .Values.metrics.port) }}
{{- end }}
{{- end }}
