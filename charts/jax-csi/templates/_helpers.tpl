{{/*
Names, labels, images and the checks every render runs.
*/}}

{{/* The CSI driver name: fixed, the binary answers GetPluginInfo with it. */}}
{{- define "jax-csi.driverName" -}}csi.jax.dev{{- end }}

{{- define "jax-csi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name prefix of every object. Truncated so that the longest suffix the chart
adds ("-fd-keeper", "-health-monitor") still fits 63 characters.
*/}}
{{- define "jax-csi.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "jax-csi.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jax-csi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jax-csi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jax-csi.labels" -}}
helm.sh/chart: {{ include "jax-csi.chart" . }}
{{ include "jax-csi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jax-csi
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "controller") */}}
{{- define "jax-csi.componentLabels" -}}
{{ include "jax-csi.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "jax-csi.componentSelectorLabels" -}}
{{ include "jax-csi.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* "repository:tag" of an image value; (dict "image" .Values.x.image "default" "tag") */}}
{{- define "jax-csi.imageRef" -}}
{{- printf "%s:%s" .image.repository (toString (default .default .image.tag)) }}
{{- end }}

{{- define "jax-csi.image" -}}
{{- include "jax-csi.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) }}
{{- end }}

{{/*
The fd-keeper's image. With neither node.fdKeeper.image value set, an upgrade
keeps the image the keeper DaemonSet already runs (found with lookup): its
update strategy is OnDelete, so a changed pod template would only leave the
DaemonSet out of date, and `helm upgrade --wait` (Helm 4 waits on every
DaemonSet's updated count) would wait for it until its timeout. A fresh
install, and `helm template`, use image.repository and image.tag.
*/}}
{{- define "jax-csi.fdKeeperImage" -}}
{{- $k := .Values.node.fdKeeper.image }}
{{- $running := "" }}
{{- if and (not $k.repository) (not $k.tag) }}
{{- $ds := lookup "apps/v1" "DaemonSet" .Release.Namespace (printf "%s-fd-keeper" (include "jax-csi.fullname" .)) }}
{{- if $ds }}
{{- range $ds.spec.template.spec.containers }}
{{- if eq .name "fd-keeper" }}{{ $running = .image }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- if $running }}
{{- $running }}
{{- else }}
{{- $repo := default .Values.image.repository $k.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) $k.tag }}
{{- printf "%s:%s" $repo (toString $tag) }}
{{- end }}
{{- end }}

{{- define "jax-csi.controllerServiceAccount" -}}{{ include "jax-csi.fullname" . }}-controller{{- end }}
{{- define "jax-csi.nodeServiceAccount" -}}{{ include "jax-csi.fullname" . }}-node{{- end }}

{{/* The unix socket the node plugin registers with kubelet (must stay under 108 bytes). */}}
{{- define "jax-csi.pluginDir" -}}{{ .Values.kubeletDir }}/plugins/{{ include "jax-csi.driverName" . }}{{- end }}
{{- define "jax-csi.handoverSocket" -}}{{ .Values.node.stateDir }}/handover.sock{{- end }}

{{/* The Secret and key holding DATABASE_URL. */}}
{{- define "jax-csi.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else if .Values.database.bundled.enabled }}
{{- include "jax-csi.fullname" . }}-postgres
{{- else }}
{{- include "jax-csi.fullname" . }}-database
{{- end }}
{{- end }}

{{- define "jax-csi.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}DATABASE_URL{{ end }}
{{- end }}

{{/* The Secret and key holding the cluster KEK. */}}
{{- define "jax-csi.kekSecretName" -}}
{{- if .Values.kek.existingSecret }}{{ .Values.kek.existingSecret }}{{ else }}{{ include "jax-csi.fullname" . }}-kek{{ end }}
{{- end }}

{{- define "jax-csi.kekSecretKey" -}}
{{- if .Values.kek.existingSecret }}{{ .Values.kek.existingSecretKey }}{{ else }}kek{{ end }}
{{- end }}

{{- define "jax-csi.tenantSecretNamespace" -}}
{{- default .Release.Namespace .Values.storageClass.tenantKeySecret.namespace }}
{{- end }}

{{/* Environment shared by the jax-csi controller and node containers. */}}
{{- define "jax-csi.commonEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "jax-csi.databaseSecretName" . }}
      key: {{ include "jax-csi.databaseSecretKey" . }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/*
KUBERNETES_SERVICE_HOST/PORT of the containers that talk to the API server,
when apiServer.host replaces the in-cluster default.
*/}}
{{- define "jax-csi.apiServerEnv" -}}
{{- if .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.apiServer.port | toString | quote }}
{{- end }}
{{- end }}

{{/* The KEK volume (mounted at /etc/jax-csi/kek, file "kek"); (dict "ctx" $ "mode" 0440) */}}
{{- define "jax-csi.kekVolume" -}}
- name: kek
  secret:
    secretName: {{ include "jax-csi.kekSecretName" .ctx }}
    defaultMode: {{ .mode }}  # 0{{ printf "%o" .mode }}
    items:
      - key: {{ include "jax-csi.kekSecretKey" .ctx }}
        path: kek
      {{- with .ctx.Values.kek.previousSecretKey }}
      - key: {{ . }}
        path: previous
      {{- end }}
{{- end }}

{{/*
Cross-field checks the JSON schema cannot express. Included once, from
csidriver.yaml, so every render runs them.
*/}}
{{- define "jax-csi.validate" -}}
{{- $db := .Values.database }}
{{- $choices := list }}
{{- if $db.url }}{{ $choices = append $choices "database.url" }}{{ end }}
{{- if $db.existingSecret }}{{ $choices = append $choices "database.existingSecret" }}{{ end }}
{{- if $db.bundled.enabled }}{{ $choices = append $choices "database.bundled.enabled" }}{{ end }}
{{- if ne (len $choices) 1 }}
{{- if eq (len $choices) 0 }}
{{- fail "jax-csi: no database chosen: set exactly one of database.url (your Postgres), database.existingSecret (a Secret holding the URL) or database.bundled.enabled=true (a throwaway Postgres, NOT FOR PRODUCTION)" }}
{{- else }}
{{- fail (printf "jax-csi: choose exactly one database, not %s" (join " and " $choices)) }}
{{- end }}
{{- end }}
{{- if and .Values.kek.generate .Values.kek.existingSecret }}
{{- fail "jax-csi: kek.existingSecret is set, so also set kek.generate=false (the chart must not generate a second KEK)" }}
{{- end }}
{{- if not (or .Values.kek.generate .Values.kek.existingSecret) }}
{{- fail "jax-csi: no KEK: set kek.generate=true or name a Secret in kek.existingSecret" }}
{{- end }}
{{- if and .Values.groupSnapshots.enabled (not .Values.snapshots.enabled) }}
{{- fail "jax-csi: groupSnapshots.enabled needs snapshots.enabled (both run in the csi-snapshotter sidecar)" }}
{{- end }}
{{- if and .Values.storageClass.tenantKeySecret.namespace (not .Values.storageClass.tenantKeySecret.name) }}
{{- fail "jax-csi: storageClass.tenantKeySecret.namespace is set without storageClass.tenantKeySecret.name" }}
{{- end }}
{{- if and .Values.storageClass.tenantKeySecret.name (not .Values.storageClass.create) }}
{{- fail "jax-csi: storageClass.tenantKeySecret is only used by the chart's StorageClass: set storageClass.create=true" }}
{{- end }}
{{- if eq (int .Values.controller.metricsPort) (int .Values.controller.healthPort) }}
{{- fail "jax-csi: controller.metricsPort and controller.healthPort must differ" }}
{{- end }}
{{- if and .Values.database.bundled.enabled .Values.database.bundled.persistence.enabled .Values.storageClass.create }}
{{- $pgClass := .Values.database.bundled.persistence.storageClassName }}
{{- if or (eq $pgClass .Values.storageClass.name) (and (not $pgClass) .Values.storageClass.isDefault) }}
{{- fail "jax-csi: the bundled Postgres cannot keep its data on a jax-csi volume (the driver needs the database to provision one): set database.bundled.persistence.storageClassName to another StorageClass" }}
{{- end }}
{{- end }}
{{- $nodePorts := list (int .Values.node.metricsPort) (int .Values.node.healthPort) (int .Values.node.registrarHealthPort) }}
{{- if ne (len (uniq $nodePorts)) 3 }}
{{- fail "jax-csi: node.metricsPort, node.healthPort and node.registrarHealthPort must all differ" }}
{{- end }}
{{- end }}

{{/* securityContext of an unprivileged sidecar container. */}}
{{- define "jax-csi.sidecarSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}
